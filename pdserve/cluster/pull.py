"""Remote prefix pull (PD fusion): the controller's half. When the instance a request is routed
to holds fewer of its leading prompt blocks than another instance (global prefix index), and
pd_policy.plan_pull says pulling them is faster than recomputing them, the request waits for
the pull, then runs there with a prefix hit:

    target <- SUBMIT "<rid>@pull" (prompt = the holder's blocks, RECEIVE)  reserves the blocks
    target -> KV_RESERVED(num_cached, block_ids)                           it lacks
    holder <- KV_SEND(order with the block hashes)     pins its cached blocks, pushes them
    holder -> KV_SENT(ok | failed)                     unpins
    target <- KV_RECEIVED(ok: a token | failed: ABORT) publishes the blocks in its prefix cache
                                                       (KV events), the pull request ends
    target <- SUBMIT the request itself                 a prefix hit (or a recompute: same output)

The PD machinery does the work (scheduler RECEIVE state, engine/pd.py, kvxfer); messages to one
instance arrive in order, so the request's SUBMIT always finds the pulled blocks published.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass

from prometheus_client import Counter

from pdserve.cluster.block_hasher import BlockHasher
from pdserve.cluster.cost_model import Link, estimate_ttft_s
from pdserve.cluster.pd_policy import PULL_MODES, PullPlan, plan_pull
from pdserve.cluster.pd_router import PULL_SUFFIX, kv_block_bytes
from pdserve.cluster.policies import Ttft
from pdserve.engine import protocol as P
from pdserve.engine.client import EngineDeadError
from pdserve.types import KVRole, Request

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PullConfig:
    mode: str = "cost"  # "cost" | "always" (pd_policy.PULL_MODES)
    link_bandwidth_gbps: float = 10.0  # GB/s between any two instances
    link_latency_s: float = 1e-3
    overhead_s: float = 2e-3  # the pull's control round trips (reserve, order, confirm)
    timeout_s: float = 30.0  # no reservation or outcome by then: recompute


class PullMetrics:
    def __init__(self, registry):
        self.tokens = Counter(
            "pdserve:prefix_pull_tokens",
            "Prompt tokens cached on another instance than the chosen one: pulled, or "
            "recomputed (pull refused by the cost model, or failed).",
            ["outcome"],
            registry=registry,
        )
        self.pulls = Counter(
            "pdserve:prefix_pulls",
            "Remote prefix pulls, by outcome.",
            ["outcome"],
            registry=registry,
        )


class PrefixPuller:
    def __init__(self, controller, config: PullConfig = PullConfig()):
        if config.mode not in PULL_MODES:
            raise ValueError(f"pull mode: one of {PULL_MODES}, not {config.mode!r}")
        self.ctrl = controller
        self.config = config
        self.link = Link(config.link_bandwidth_gbps * 1e9, config.link_latency_s)
        self.metrics = PullMetrics(controller.metrics.registry)
        self.last_plan: PullPlan | None = None
        self._steps = Ttft(controller.config.policy)  # per-instance step-time fits
        self._hasher: BlockHasher | None = None

    def maybe_submit(self, record, req: Request, hashes: list[int]):
        """The controller's hook: a flight for `req` on `record` that starts after a pull, or
        None when there is nothing worth pulling (then the caller submits as usual)."""
        if not record.info.kv_meta:
            return None
        if not hashes:
            block_size = record.info.block_size
            if self._hasher is None or self._hasher.block_size != block_size:
                self._hasher = BlockHasher(block_size)
            hashes = self._hasher(req.prompt_token_ids)
        plan = self.plan(req, record, hashes)
        return None if plan is None else self.submit(record, req, hashes, plan)

    def plan(self, req: Request, record, hashes: list[int]) -> PullPlan | None:
        """A pull into `record` for `req`, or None (nothing to pull, no transport, refused:
        the refused tokens are counted as recomputed)."""
        if not record.info.kv_meta or not hashes:
            return None
        holders = [
            r.instance_id
            for r in self.ctrl.registry.live()
            if r.info.kv_meta and r.info.role == "fused" and r is not record
        ]
        if not holders:
            return None
        matched = self.ctrl.index.longest_prefix(hashes)
        snap = record.snapshot()
        model = self._steps.observe(snap)
        budget = self.ctrl.config.policy.max_batched_tokens

        def ttft_s(num_uncached: int) -> float:
            return estimate_ttft_s(snap, num_uncached, model.step_time, budget)

        plan = plan_pull(
            len(req.prompt_token_ids), record.info.block_size, record.instance_id, matched,
            holders, kv_block_bytes(record.info.kv_meta), lambda h, t: self.link, ttft_s,
            self.config.overhead_s, self.config.mode,
        )  # fmt: skip
        self.last_plan = plan
        if plan is None:
            return None
        if not plan.is_pull:
            num_tokens = plan.num_pull_blocks * record.info.block_size
            self.metrics.tokens.labels("recomputed").inc(num_tokens)
            self.metrics.pulls.labels("refused").inc()
            return None
        return plan

    def submit(self, record, req: Request, hashes: list[int], plan: PullPlan):
        """Track `req` as a flight on `record` now; SUBMIT it once the pull has ended."""
        num_matched = plan.num_blocks * record.info.block_size
        flight = self.ctrl._submit(record, req, hashes, num_matched, send=False)
        asyncio.ensure_future(self._pull_then_submit(record, req, hashes, plan, flight))
        return flight

    async def _pull_then_submit(self, target, req: Request, hashes, plan: PullPlan, flight):
        bs = target.info.block_size
        num_tokens = plan.num_pull_blocks * bs
        try:
            is_ok = await self._pull(target, req, hashes, plan)
        except Exception:  # never leave the request unsubmitted
            log.exception("prefix pull of %s failed", req.request_id)
            is_ok = False
        outcome = "pulled" if is_ok else "recomputed"
        self.metrics.tokens.labels(outcome).inc(num_tokens)
        self.metrics.pulls.labels("done" if is_ok else "failed").inc()
        if self.ctrl._flights.get(req.request_id) is flight:  # not aborted or lost meanwhile
            self.ctrl._send(target, P.SUBMIT, P.encode_request(req))

    async def _pull(self, target, req: Request, hashes, plan: PullPlan) -> bool:
        """Move the holder's blocks into the target's prefix cache; True when they landed."""
        holder = self.ctrl.registry.get(plan.holder_id)
        if holder is None:
            return False
        pd = self.ctrl.pd
        loop = asyncio.get_running_loop()
        rid = req.request_id + PULL_SUFFIX
        prompt = req.prompt_token_ids[: plan.num_blocks * target.info.block_size]
        sampling = dataclasses.replace(req.sampling, max_tokens=1, min_tokens=0)
        pull_req = Request(
            rid, prompt, sampling, req.arrival_s, req.priority, req.eos_token_ids, KVRole.RECEIVE
        )
        reserved = pd._reserved[rid] = loop.create_future()
        sent = pd._sent[rid] = loop.create_future()
        pull_flight = self.ctrl._submit(target, pull_req, [], 0)
        is_ordered = False
        try:
            reservation = await pd._await_reservation(reserved, pull_flight, target)
            order = P.KVSendOrder(
                rid, target.info.kv_meta, reservation.num_cached_tokens, reservation.block_ids,
                tuple(hashes[: plan.num_blocks]),
            )  # fmt: skip
            self.ctrl._send(holder, P.KV_SEND, P.encode_kv_order(order))
            is_ordered = True
            result = await pd._await_sent(sent, holder)
            is_ok = result is not None and result.is_ok
            if is_ok:  # any token: the pull request ends at once (max_tokens=1)
                self.ctrl._send(target, P.KV_RECEIVED, rid, req.prompt_token_ids[len(prompt)])
            else:  # nothing was published: free the reserved blocks
                self.ctrl._send(target, P.ABORT, [rid], "abort")
            return is_ok
        except (TimeoutError, EngineDeadError, ValueError) as e:
            log.info("prefix pull %s: %s", rid, e)
            if not is_ordered:
                self.ctrl._send(target, P.ABORT, [rid], "abort")
            return False
        finally:
            pd._reserved.pop(rid, None)
            pd._sent.pop(rid, None)
            self.ctrl._release(rid)
