"""The controller's PD half: pick a (prefill, decode) pair, run the hand-off, merge the streams.

    generate(req)
      decode  <- SUBMIT req as RECEIVE                    (reserves blocks for its uncached part)
      decode  -> KV_RESERVED(rid, num_cached, block_ids)
      prefill <- SUBMIT req as SEND "<rid>@prefill", max_tokens=1; then KV_SEND(order)
      prefill -> TOKENS(first token)        ==> yielded at once (TTFT does not wait for the KV)
      prefill -> KV_SENT(ok | failed)       (the prefill's blocks are released either way)
      decode  <- KV_RECEIVED(rid, first token if ok else None: recompute there, same output)
      decode  -> TOKENS(first token again, then the rest) ==> yielded, the repeat dropped

Pairing and conditional disaggregation (cluster/pd_policy.py, pure): the decode instance by KV
headroom and running load; the prefill instance by estimated TTFT plus the transfer over the
link between the two; the request runs fused on the decode instance when prefilling there is
estimated faster than prefill-elsewhere + transfer (`disaggregation="cost"`; "always" and
"never" force either). Step times are fitted online per instance from its snapshots.

Abort (the caller closes the stream, or `abort(rid)` through
Controller.abort, which ends the stream with an ABORT event): the prefill side is aborted at
once; the decode side only once no transfer can still write into its reserved blocks.
A prefill instance lost mid-transfer (killed) leaves the hand-off without an outcome: the
decode side recomputes, and the lost instance is out of the registry, so no pair includes it.

Known gaps: a greedy-equal but sampled first token may differ after a failed transfer (the
decode side recomputes it); fused instances in a fleet with decode instances get no requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import pickle
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from pdserve.cluster.block_hasher import BlockHasher
from pdserve.cluster.cost_model import Link
from pdserve.cluster.pd_policy import MODES, Candidate, PDChoice, choose_pd
from pdserve.cluster.policies import Ttft
from pdserve.engine import protocol as P
from pdserve.engine.client import EngineDeadError
from pdserve.types import FinishReason, KVReservation, KVRole, Request, TokenEvent


class ClientAborted(Exception):
    """Put into a PD request's flight queues by `PDRouter.abort`: the caller gave up."""


PREFILL_SUFFIX = "@prefill"  # the SEND request's id: its own flight on the prefill instance
PULL_SUFFIX = "@pull"  # a remote prefix pull's RECEIVE request (cluster/pull.py)
TRANSFER_BUCKETS_S = (1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 5)


@functools.lru_cache(maxsize=64)
def kv_block_bytes(kv_meta: bytes) -> int:
    """KV bytes of one block over all layers, from a worker's kvxfer metadata (the same bytes
    for every worker of a model: decoded once)."""
    layout = pickle.loads(kv_meta).layout  # trusted: from a registered worker
    return layout.block_bytes * layout.num_layers


@dataclass(frozen=True, slots=True)
class PDConfig:
    disaggregation: str = "cost"  # "cost" | "always" | "never" (pd_policy.MODES)
    link_bandwidth_gbps: float = 10.0  # GB/s between any prefill and decode instance
    link_latency_s: float = 1e-3
    # (prefill id, decode id, GB/s, latency s): links unlike the default
    links: tuple[tuple[str, str, float, float], ...] = ()
    reserve_timeout_s: float = 60.0  # the decode instance's blocks may be short for a while
    send_timeout_s: float = 30.0  # no KV_SENT by then: the transfer counts as failed
    # A decode instance with running sequences prefills locally only if the mixed step stays
    # within this (their TBT budget); inf: TTFT alone decides.
    max_decode_step_s: float = 0.05


class PDMetrics:
    def __init__(self, registry):
        r = registry
        self.requests = Counter(
            "pdserve:pd_requests", "Requests on a PD fleet, by mode.", ["mode"], registry=r
        )
        self.kv_bytes = Counter(
            "pdserve:pd_kv_transferred_bytes", "KV bytes moved prefill -> decode.", registry=r
        )
        self.kv_blocks = Counter(
            "pdserve:pd_kv_transferred_blocks", "KV blocks moved prefill -> decode.", registry=r
        )
        self.failed = Counter(
            "pdserve:pd_kv_transfer_failures", "Hand-offs that failed (recomputed).", registry=r
        )
        self.transfer_s = Histogram(
            "pdserve:pd_kv_transfer_seconds",
            "Time from posting a KV transfer to its end.",
            buckets=TRANSFER_BUCKETS_S,
            registry=r,
        )

    def observe(self, result: P.KVSendResult) -> None:
        if not result.is_ok:
            self.failed.inc()
            return
        self.kv_bytes.inc(result.num_bytes)
        self.kv_blocks.inc(result.num_blocks)
        self.transfer_s.observe(result.duration_s)


class PDRouter:
    def __init__(self, controller, config: PDConfig = PDConfig()):
        self.ctrl = controller
        self.metrics = PDMetrics(controller.metrics.registry)
        self._reserved: dict[str, asyncio.Future] = {}  # rid -> KVReservation
        self._sent: dict[str, asyncio.Future] = {}  # prefill rid -> KVSendResult
        self._hasher: BlockHasher | None = None
        self._steps = Ttft(controller.config.policy)  # step-time fits per role and kind (`observe`)
        self.configure(config)
        self.last_choice: PDChoice | None = None
        self._aborted: dict[str, None] = {}  # rids that `abort` ended, until their stream ends
        self._is_active = (-1, False)  # (registry.version, is_active then)

    @property
    def is_active(self) -> bool:
        """A decode instance is live; looked up again only when the fleet changed (asked on
        every request, and roles never change)."""
        registry = self.ctrl.registry
        version, is_active = self._is_active
        if version != registry.version:
            is_active = any(r.info.role == "decode" for r in registry.live())
            self._is_active = (registry.version, is_active)
        return is_active

    def on_message(self, msg_type: str, body: tuple) -> None:
        if msg_type == P.KV_RESERVED:
            for data in body[0]:
                self._resolve(self._reserved, P.decode_reservation(data))
        else:
            for data in body[0]:
                result = P.decode_kv_result(data)
                if not result.request_id.endswith(PULL_SUFFIX):  # cluster/pull.py counts its own
                    self.metrics.observe(result)
                self._resolve(self._sent, result)

    @staticmethod
    def _resolve(futures: dict, value) -> None:
        future = futures.get(value.request_id)
        if future is not None and not future.done():
            future.set_result(value)

    def abort(self, request_id: str) -> bool:
        """Controller.abort for a request this router runs (False: not one of ours). Its stream
        ends with an ABORT event; both instances are released as when the caller closes it."""
        prid = request_id + PREFILL_SUFFIX
        flights = [self.ctrl._flights.get(rid) for rid in (request_id, prid)]
        if flights[0] is None or request_id in self._aborted:
            return flights[0] is not None
        self._aborted[request_id] = None
        for flight in flights:
            if flight is not None:
                flight.queue.put_nowait(ClientAborted(request_id))
        return True

    # ---- one request ----------------------------------------------------------------------

    def configure(self, config: PDConfig) -> None:
        """Take a new PDConfig (mode, links) from the next request on."""
        if config.disaggregation not in MODES:
            raise ValueError(f"disaggregation: one of {MODES}, not {config.disaggregation!r}")
        self.config = config
        self._default_link = Link(config.link_bandwidth_gbps * 1e9, config.link_latency_s)
        self._links = {(p, d): Link(g * 1e9, t) for p, d, g, t in config.links}

    def link(self, prefill_id: str, decode_id: str) -> Link:
        return self._links.get((prefill_id, decode_id), self._default_link)

    def _pick(self, req: Request):
        """(prefill record or None: fused, decode record), chosen by pd_policy.choose_pd."""
        live = self.ctrl.registry.live()
        prefills = [r for r in live if r.info.role == "prefill"]
        decodes = [r for r in live if r.info.role == "decode"]
        if not decodes:
            raise EngineDeadError("no live decode instance")
        block_size = decodes[0].info.block_size
        if self._hasher is None or self._hasher.block_size != block_size:
            self._hasher = BlockHasher(block_size)
        hashes = self._hasher(req.prompt_token_ids)
        matched = self.ctrl.pending.matched(self.ctrl.index, hashes)

        def candidates(records) -> list[Candidate]:
            out = []
            for r in records:
                snap = r.snapshot()
                model = self._steps.observe(snap)
                out.append(Candidate(snap, model.step_time, matched.get(r.instance_id, 0)))
            return out

        choice = choose_pd(
            len(req.prompt_token_ids), req.sampling.max_tokens, candidates(prefills),
            candidates(decodes), kv_block_bytes(decodes[0].info.kv_meta), self.link,
            self.ctrl.config.policy.max_batched_tokens, self.config.disaggregation,
            self.config.max_decode_step_s,
        )  # fmt: skip
        self.last_choice = choice
        prefill = self.ctrl.registry.get(choice.prefill_id) if choice.prefill_id else None
        return prefill, self.ctrl.registry.get(choice.decode_id)

    async def generate(self, req: Request) -> AsyncIterator[TokenEvent]:
        prefill, decode = self._pick(req)
        if prefill is None:
            self.metrics.requests.labels("fused").inc()
            async for event in self._fused(decode, req):
                yield event
            return
        self.metrics.requests.labels("disaggregated").inc()
        async for event in self._handoff(prefill, decode, req):
            yield event

    async def _fused(self, record, req: Request) -> AsyncIterator[TokenEvent]:
        rid = req.request_id
        flight = self.ctrl._submit(record, req, [], 0)
        is_done = False
        try:
            while not is_done:
                event = await _next(flight, record.instance_id)
                is_done = event.is_finished
                yield event
        except ClientAborted:
            yield TokenEvent(rid, (), FinishReason.ABORT)
        finally:
            self._aborted.pop(rid, None)
            if not is_done:
                self.ctrl._send(record, P.ABORT, [rid], "abort")
            self.ctrl._release(rid)

    async def _handoff(self, prefill, decode, req: Request) -> AsyncIterator[TokenEvent]:
        rid, prid = req.request_id, req.request_id + PREFILL_SUFFIX
        loop = asyncio.get_running_loop()
        reserved = self._reserved[rid] = loop.create_future()
        sent = self._sent[prid] = loop.create_future()
        is_ordered = is_done = False
        first_token: int | None = None
        receive = dataclasses.replace(req, kv_role=KVRole.RECEIVE)
        decode_flight = self.ctrl._submit(decode, receive, [], 0)
        prefill_flight = None
        try:
            reservation = await self._await_reservation(reserved, decode_flight, decode)
            sampling = dataclasses.replace(req.sampling, max_tokens=1)
            preq = dataclasses.replace(req, request_id=prid, sampling=sampling, kv_role=KVRole.SEND)
            prefill_flight = self.ctrl._submit(prefill, preq, [], reservation.num_cached_tokens)
            order = P.KVSendOrder(
                prid, decode.info.kv_meta, reservation.num_cached_tokens, reservation.block_ids
            )
            self.ctrl._send(prefill, P.KV_SEND, P.encode_kv_order(order))
            is_ordered = True
            try:
                event = await _next(prefill_flight, prefill.instance_id)
                first_token = event.new_token_ids[-1] if event.new_token_ids else None
                if first_token is not None:
                    yield dataclasses.replace(event, request_id=rid, finish_reason=None)
            except EngineDeadError:  # prefill lost before its token: recompute on decode
                sent.cancel()
            result = await self._await_sent(sent, prefill, rid)
            is_ordered = False
            if result is None:  # no outcome (prefill lost, timed out): counts as failed
                self.metrics.failed.inc()
            token = first_token if result is not None and result.is_ok else None
            self.ctrl._send(decode, P.KV_RECEIVED, rid, token)
            num_skip = 0 if first_token is None else 1
            while not is_done:
                event = await _next(decode_flight, decode.instance_id)
                is_done = event.is_finished
                if num_skip and event.new_token_ids:
                    num_skip -= 1
                    event = dataclasses.replace(event, new_token_ids=event.new_token_ids[1:])
                if event.new_token_ids or is_done:
                    yield event
        except ClientAborted:
            yield TokenEvent(rid, (), FinishReason.ABORT)
        finally:
            self._aborted.pop(rid, None)
            self._reserved.pop(rid, None)
            if prefill_flight is not None:
                if first_token is None:  # still prefilling (or lost): stop it there
                    self.ctrl._send(prefill, P.ABORT, [prid], "abort")
                self.ctrl._release(prid)
            if not is_done:
                if is_ordered:  # a transfer may still write into the reserved blocks
                    asyncio.ensure_future(self._abort_after_send(sent, prefill, decode, rid))
                else:
                    self._sent.pop(prid, None)
                    self.ctrl._send(decode, P.ABORT, [rid], "abort")
            else:
                self._sent.pop(prid, None)
            self.ctrl._release(rid)

    async def _await_reservation(self, reserved, flight, record) -> KVReservation:
        getter = asyncio.ensure_future(flight.queue.get())
        done, _ = await asyncio.wait(
            {reserved, getter}, timeout=self.config.reserve_timeout_s, return_when="FIRST_COMPLETED"
        )
        if reserved in done:
            getter.cancel()
            return reserved.result()
        getter.cancel()
        if getter in done:
            item = getter.result()
            raise item if isinstance(item, Exception) else EngineDeadError(str(item))
        raise EngineDeadError(f"instance {record.instance_id} reserved no KV blocks in time")

    async def _await_sent(self, sent, prefill, rid: str = "") -> P.KVSendResult | None:
        """The send's outcome; None when it cannot come (prefill gone, timed out, cancelled).
        ClientAborted when `rid` is aborted meanwhile."""
        deadline = time.monotonic() + self.config.send_timeout_s
        while not sent.done() and time.monotonic() < deadline:
            if self.ctrl.registry.get(prefill.instance_id) is not prefill:
                return None
            if rid in self._aborted:
                raise ClientAborted(rid)
            await asyncio.wait({sent}, timeout=0.05)
        return sent.result() if sent.done() and not sent.cancelled() else None

    async def _abort_after_send(self, sent, prefill, decode, rid: str) -> None:
        try:
            await self._await_sent(sent, prefill)
        finally:
            self._sent.pop(rid + PREFILL_SUFFIX, None)
            self.ctrl._send(decode, P.ABORT, [rid], "abort")


async def _next(flight, instance_id: str) -> TokenEvent:
    """The flight's next event; its error raised (a lost instance as EngineDeadError)."""
    item = await flight.queue.get()
    if isinstance(item, EngineDeadError | ValueError | ClientAborted):
        raise item
    if isinstance(item, Exception):
        raise EngineDeadError(f"instance {instance_id} failed: {item}")
    if item.finish_reason is FinishReason.ERROR:
        raise EngineDeadError(item.error or f"instance {instance_id} failed")
    return item
