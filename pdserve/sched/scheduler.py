"""Continuous batching for one instance in the `num_computed_tokens` model.

There is no prefill or decode phase: each step, every request's `num_computed_tokens` catches up
with its `num_tokens` under a token budget. A fresh prompt takes many tokens (chunked when over the
budget), a generating request takes one, a prefix hit starts a request part-way, and a preempted
request starts over from zero (recompute, usually helped by its own cached blocks).

PD disaggregation is two more request states, not another path. A RECEIVE request (decode
instance) is admitted by reserving blocks for its uncached prompt and waits (WAITING_FOR_KV) until
`finish_receiving` says the KV landed: it then continues with num_computed_tokens = prompt length.
A SEND request (prefill instance) runs like any other; when it ends, its blocks stay held
(SENDING_KV) until `release_kv` confirms the transfer or its lease expires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from pdserve.config import SchedulerConfig
from pdserve.sched.kv_manager import KVManager, cdiv
from pdserve.sched.plan import ScheduledSeq, StepPlan, StepResult
from pdserve.sched.queue_policy import make_queue_policy
from pdserve.sched.request import RequestStatus, SchedRequest
from pdserve.types import (
    FinishReason,
    InstanceSnapshot,
    KVCacheEvent,
    KVReservation,
    KVRole,
    Request,
    TokenEvent,
)

# The per-seq status checks of a step read these module constants: in CPython 3.11 an enum
# member looked up on its class (`RequestStatus.RUNNING`) costs about ten times a global
# (Final: the mypyc build keeps them in C variables).
_RUNNING: Final = RequestStatus.RUNNING
_PREEMPTED: Final = RequestStatus.PREEMPTED
_FINISHED: Final = RequestStatus.FINISHED
_WAITING_FOR_KV: Final = RequestStatus.WAITING_FOR_KV
_STOP: Final = FinishReason.STOP
_LENGTH: Final = FinishReason.LENGTH
_SEND: Final = KVRole.SEND
_RECEIVE: Final = KVRole.RECEIVE


@dataclass(slots=True)
class SchedulerStats:
    """Monotonic counters (tokens unless named otherwise)."""

    prefix_queries: int = 0
    prefix_hits: int = 0
    num_preemptions: int = 0
    prompt_tokens: int = 0  # prompt tokens of admitted requests (first admission)
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=dict)  # finish reason -> requests


class Scheduler:
    # Set with `config` (its setter): the fields a step reads, copied out of the config.
    _config: SchedulerConfig
    _token_budget: int
    _prefill_threshold: int
    _max_num_seqs: int
    _chunked_prefill: bool

    def __init__(
        self,
        config: SchedulerConfig,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
    ):
        self.config = config
        self.block_size = block_size
        self.max_model_len = config.max_model_len or num_blocks * block_size
        self.kv = KVManager(num_blocks, block_size, enable_prefix_caching)
        self.waiting = make_queue_policy(config.policy)
        self.running: list[SchedRequest] = []
        self.requests: dict[str, SchedRequest] = {}
        self.receiving: dict[str, SchedRequest] = {}  # WAITING_FOR_KV, in admission order
        self.sending: dict[str, SchedRequest] = {}  # SENDING_KV, in finish order
        self._reservations: list[KVReservation] = []
        self.stats = SchedulerStats()
        self._finished_ids: list[str] = []
        self._deferred_frees: list[SchedRequest] = []  # ended while in a running step
        self._num_waiting_tokens = 0  # sum of num_tokens over waiting (none has computed any)
        self._step_id = 0
        self._seq_no = 0

    @property
    def config(self) -> SchedulerConfig:
        return self._config

    @config.setter
    def config(self, config: SchedulerConfig) -> None:
        """Replaceable between steps (a lease length, a benchmark's max_num_seqs). The step
        reads copies of its fields: the config is an interpreted object to compiled code."""
        self._config = config
        self._token_budget = config.max_num_batched_tokens
        self._prefill_threshold = config.long_prefill_token_threshold
        self._max_num_seqs = config.max_num_seqs
        self._chunked_prefill = config.enable_chunked_prefill

    # ---- requests in and out -------------------------------------------------------------

    def add_request(self, req: Request) -> None:
        """Queue a request. Raises ValueError (naming value and limit) if it can never run."""
        if req.request_id in self.requests:
            raise ValueError(f"request id {req.request_id!r} is already in use")
        prompt_len = len(req.prompt_token_ids)
        if prompt_len == 0:
            raise ValueError("the prompt must contain at least one token")
        max_len = self.max_model_len
        if prompt_len >= max_len:
            raise ValueError(
                f"the prompt has {prompt_len} tokens but the model's context is {max_len} tokens"
            )
        total = prompt_len + req.sampling.max_tokens
        if total > max_len:
            raise ValueError(
                f"the prompt has {prompt_len} tokens and max_tokens is {req.sampling.max_tokens}: "
                f"{total} tokens exceed the model's context of {max_len} tokens"
            )
        budget = self.config.max_num_batched_tokens
        if not self.config.enable_chunked_prefill and prompt_len > budget:
            raise ValueError(
                f"the prompt has {prompt_len} tokens but a step computes at most {budget} "
                "(max_num_batched_tokens) and chunked prefill is off"
            )  # it would wait forever: a step never takes a part of it
        num_blocks_needed = cdiv(total, self.block_size)
        if num_blocks_needed > self.kv.num_blocks:
            raise ValueError(
                f"the request needs {num_blocks_needed} KV blocks ({total} tokens) but the cache "
                f"holds only {self.kv.num_blocks} blocks"
            )
        state = SchedRequest.from_request(req, self.block_size, self._seq_no)
        self._seq_no += 1
        self.requests[req.request_id] = state
        self._push_waiting(state)

    def finish(self, request_id: str, reason: FinishReason | str = FinishReason.ABORT) -> bool:
        """End a request from outside (abort, stop string). Its blocks are freed at once."""
        req = self.requests.get(request_id)
        if req is None:
            return self.release_kv(request_id)
        self._finish(req, FinishReason(reason))  # a member, also when given its string
        return True

    def abort(self, request_id: str, reason: FinishReason | str = FinishReason.ABORT) -> bool:
        """`finish`, under the name a client that went away calls it by."""
        return self.finish(request_id, reason)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # ---- PD hand-off ---------------------------------------------------------------------

    def drain_kv_reservations(self) -> list[KVReservation]:
        """Blocks reserved since the last call, for the controller to tell the sender."""
        reservations, self._reservations = self._reservations, []
        return reservations

    def finish_receiving(self, request_id: str, first_token_id: int | None) -> list[TokenEvent]:
        """The KV of a WAITING_FOR_KV request landed (with the first token the prefill instance
        sampled), or failed (None): then the request is recomputed here from scratch."""
        req = self.receiving.pop(request_id, None)
        if req is None:
            return []
        if first_token_id is None:
            self.kv.free(req)
            req.kv_role = None
            req.num_computed_tokens = 0
            req.status = RequestStatus.WAITING
            self._push_waiting(req, front=True)
            return []
        req.num_computed_tokens = req.num_tokens
        self.kv.publish_full_blocks(req, req.num_computed_tokens)
        req.status = RequestStatus.RUNNING
        self.running.append(req)
        req.append_token(first_token_id, self.block_size)
        reason = self._stop_reason(req, first_token_id)
        event = self._event(req, (first_token_id,), reason, None)
        if reason is not None:
            self._finish(req, reason)
        return [event]

    def release_kv(self, request_id: str) -> bool:
        """The receiver has the KV of a SENDING_KV request (or gave up): free its blocks."""
        req = self.sending.pop(request_id, None)
        if req is None:
            return False
        self.kv.free(req)
        req.status = RequestStatus.FINISHED
        return True

    # ---- one step ------------------------------------------------------------------------

    def schedule(self, now: float) -> StepPlan:
        if self.sending:
            self._expire_leases(now)
        budget = self._token_budget
        threshold = self._prefill_threshold
        allocate_slots = self.kv.allocate_slots
        # (request, num_computed_tokens, num_new_tokens), in scheduling order
        scheduled: list[tuple[SchedRequest, int, int]] = []
        preempted: list[str] = []

        for req in list(self.running):
            if budget <= 0:
                break
            if req.status is not _RUNNING:  # preempted earlier in this loop
                continue
            if req.num_pending and self._pending_ends(req):
                continue  # its in-flight token is its last: nothing more to compute
            num_new = len(req.token_ids) + req.num_pending - req.num_computed_tokens
            if threshold > 0 and num_new > threshold:
                num_new = threshold
            if num_new > budget:
                num_new = budget
            if num_new <= 0:
                continue
            while not allocate_slots(req, num_new):
                victim = self.waiting.victim(self.running)
                self._preempt(victim)
                preempted.append(victim.request_id)
                for k, entry in enumerate(scheduled):
                    if entry[0] is victim:  # scheduled earlier in this step: give back its tokens
                        budget += entry[2]
                        del scheduled[k]
                        break
                if victim is req:
                    break
            else:
                scheduled.append((req, req.num_computed_tokens, num_new))
                budget -= num_new

        # Admit waiting requests only when nothing had to be preempted: blocks are short.
        while (
            not preempted
            and len(self.waiting)
            and budget > 0
            and len(self.running) + len(self.receiving) < self._max_num_seqs
        ):
            req = self.waiting.peek()
            hit_blocks = self.kv.match_prefix(req)
            num_hit = len(hit_blocks) * self.block_size
            num_uncached = req.num_tokens - num_hit
            if req.kv_role is _RECEIVE:
                if not allocate_slots(req, num_uncached, hit_blocks):
                    break
                self._pop_waiting()
                self._reserve(req, num_hit)
                continue
            if not self._chunked_prefill and num_uncached > budget:
                break
            num_new = self._chunk(num_uncached, budget)
            if not allocate_slots(req, num_new, hit_blocks):
                break
            self._pop_waiting()
            self._admit(req, num_hit)
            scheduled.append((req, num_hit, num_new))
            budget -= num_new

        seqs = []
        publish = self.kv.publish_full_blocks
        for req, num_computed, num_new in scheduled:
            context_len = req.num_computed_tokens = num_computed + num_new
            # Samples: it computes the request's last token (known or pending) and may generate.
            samples = (
                context_len == len(req.token_ids) + req.num_pending and req.sampling.max_tokens > 0
            )
            if samples:
                req.num_pending += 1
            seqs.append(ScheduledSeq(req, num_computed, num_new, samples))
            publish(req, context_len)

        plan = StepPlan(
            self._step_id,
            tuple(seqs),
            self._token_budget - budget,
            tuple(preempted),
            tuple(self._finished_ids),
        )
        self._step_id += 1
        self._finished_ids.clear()
        return plan

    def update(self, plan: StepPlan, result: StepResult, now: float) -> list[TokenEvent]:
        """Apply a step's sampled tokens; return one event per request that produced output.

        Under async scheduling the next plan is already out: a request may have been preempted
        since (its token still counts), and one that ends here may be in that plan (its blocks
        are freed at the next update, once that step is done writing them)."""
        if self._deferred_frees:
            self._free_deferred()
        events = []
        sampled, logprobs = result.sampled_token_ids, result.logprobs
        prompt_logprobs = result.prompt_logprobs
        block_size, stats = self.block_size, self.stats
        max_model_len = self.max_model_len
        for seq in plan.seqs:
            req = seq.request
            if seq.samples:
                req.num_pending -= 1
            if req.status is _FINISHED:  # ended while the step ran
                continue
            if prompt_logprobs:
                chunk_logprobs = prompt_logprobs.get(req.request_id)
                if chunk_logprobs and len(req.prompt_logprobs) < req.prompt_len:
                    req.prompt_logprobs.extend(chunk_logprobs)
            token_id = sampled.get(req.request_id)
            if token_id is None:
                if seq.context_len == req.num_tokens and req.sampling.max_tokens == 0:
                    events.append(self._event(req, (), FinishReason.LENGTH, None))
                    self._finish(req, FinishReason.LENGTH)
                continue
            token_ids = req.token_ids
            token_ids.append(token_id)  # SchedRequest.append_token, inlined (hot)
            if len(token_ids) % block_size == 0:
                req.extend_block_hashes(block_size)
            if req.status is _PREEMPTED:
                self._num_waiting_tokens += 1
            stats.generation_tokens += 1
            # _stop_reason and _event, inlined (hot): the same tests, the same TokenEvent
            sampling = req.sampling
            num_tokens = len(token_ids)
            num_output = num_tokens - req.prompt_len
            if num_output >= sampling.min_tokens and (
                (not sampling.ignore_eos and token_id in req.eos_token_ids)
                or token_id in sampling.stop_token_ids
            ):
                reason = _STOP
            elif num_output >= sampling.max_tokens or num_tokens >= max_model_len:
                reason = _LENGTH
            else:
                reason = None
            logprob = logprobs.get(req.request_id) if logprobs else None
            events.append(
                TokenEvent(
                    req.request_id,
                    (token_id,),
                    reason,
                    (logprob,) if logprob is not None else (),
                    tuple(req.prompt_logprobs)
                    if num_output == 1 and sampling.prompt_logprobs is not None
                    else None,
                    req.prompt_len,
                    req.num_cached_tokens if req.num_cached_tokens > 0 else 0,
                )
            )
            if reason is not None:
                self._finish(req, reason)
        return events

    # ---- views ---------------------------------------------------------------------------

    def snapshot(
        self,
        instance_id: str = "",
        now: float = 0.0,
        step_time_s: float = 0.0,
        step_tokens: int = 0,
        role: str = "fused",
        incarnation: str = "",
        kind: str = "",
    ) -> InstanceSnapshot:
        """The instance's `InstanceSnapshot`; the other arguments are the fields the scheduler
        does not know (the last step's time and tokens, role, incarnation, kind)."""
        return self.snapshot_of(self.load(), instance_id, now, step_time_s, step_tokens, role,
                                incarnation, kind)  # fmt: skip

    def load(self) -> tuple[int, int, int, int, int, int, int]:
        """The snapshot's fields that change step by step, as a plain tuple: cheap to take every
        step and to turn into an `InstanceSnapshot` (`snapshot_of`) only when one is read."""
        running = self.running
        num_running_tokens = 0
        for r in running:
            num_running_tokens += len(r.token_ids) - r.num_computed_tokens
        kv = self.kv
        return (
            len(self.waiting),
            len(running),
            self._num_waiting_tokens,
            num_running_tokens,
            kv.num_free_blocks,
            len(kv.prefix_cache),
            self._step_id,
        )

    def snapshot_of(
        self,
        load: tuple[int, int, int, int, int, int, int],
        instance_id: str,
        now: float,
        step_time_s: float = 0.0,
        step_tokens: int = 0,
        role: str = "fused",
        incarnation: str = "",
        kind: str = "",
    ) -> InstanceSnapshot:
        """The `InstanceSnapshot` of a `load()` taken earlier (at time `now`)."""
        (num_waiting, num_running, num_waiting_tokens, num_running_tokens, num_free, num_cached,
         num_steps) = load  # fmt: skip
        # Positional, in InstanceSnapshot's field order (as policies.add_pending copies it):
        # a snapshot is built per routing read, and keywords cost twice as much to pass.
        return InstanceSnapshot(
            instance_id,
            num_waiting,
            num_running,
            num_waiting_tokens,
            num_running_tokens,
            num_free,
            num_cached,
            self.kv.num_blocks,
            self.block_size,
            step_time_s,
            step_tokens,
            num_steps,
            role,
            incarnation,
            now,
            kind,
        )

    def drain_kv_events(self) -> list[KVCacheEvent]:
        return self.kv.prefix_cache.drain_events()

    def check_integrity(self) -> None:
        self.kv.check_integrity()
        running_ids = [r.request_id for r in self.running]
        waiting_ids = [r.request_id for r in self.waiting]
        live_ids = running_ids + waiting_ids + list(self.receiving)
        assert len(set(live_ids)) == len(live_ids), "a request is in two queues"
        assert sorted(live_ids) == sorted(self.requests), "lost request"
        assert not set(self.sending) & set(self.requests), "a sending request is still live"
        for req in self.waiting:
            assert self.kv.num_blocks_held(req.request_id) == 0, f"{req.request_id} waits holding"
        assert self._num_waiting_tokens == sum(r.num_tokens for r in self.waiting)

    # ---- internals -----------------------------------------------------------------------

    def _chunk(self, num_tokens: int, budget: int) -> int:
        threshold = self._prefill_threshold
        if threshold > 0:
            num_tokens = min(num_tokens, threshold)
        return min(num_tokens, budget)

    def _admit(self, req: SchedRequest, num_hit: int) -> None:
        req.num_computed_tokens = num_hit
        if req.num_cached_tokens < 0:
            req.num_cached_tokens = num_hit
            self.stats.prompt_tokens += req.prompt_len
        self.stats.prefix_queries += req.num_tokens
        self.stats.prefix_hits += num_hit
        req.status = _RUNNING
        self.running.append(req)

    def _push_waiting(self, req: SchedRequest, front: bool = False) -> None:
        (self.waiting.push_front if front else self.waiting.push)(req)
        self._num_waiting_tokens += req.num_tokens

    def _pop_waiting(self) -> SchedRequest:
        req = self.waiting.pop()
        self._num_waiting_tokens -= req.num_tokens
        return req

    def _reserve(self, req: SchedRequest, num_hit: int) -> None:
        req.num_computed_tokens = num_hit
        req.num_cached_tokens = num_hit
        self.stats.prompt_tokens += req.prompt_len
        self.stats.prefix_queries += req.num_tokens
        self.stats.prefix_hits += num_hit
        req.status = RequestStatus.WAITING_FOR_KV
        self.receiving[req.request_id] = req
        first_block = num_hit // self.block_size
        self._reservations.append(
            KVReservation(req.request_id, num_hit, tuple(req.block_ids[first_block:]))
        )

    def _expire_leases(self, now: float) -> None:
        for req in list(self.sending.values()):
            if req.lease_deadline_s is None:
                req.lease_deadline_s = now + self.config.kv_lease_s
            elif req.lease_deadline_s <= now:
                self.release_kv(req.request_id)

    def _preempt(self, req: SchedRequest) -> None:
        self.running.remove(req)
        self.kv.free(req)
        req.status = _PREEMPTED
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        if len(req.prompt_logprobs) < req.prompt_len:
            req.prompt_logprobs.clear()  # recomputed from the start
        self.stats.num_preemptions += 1
        self._push_waiting(req, front=True)

    def _pending_ends(self, req: SchedRequest) -> bool:
        """Whether the request's pending tokens reach its length limit (so it finishes then)."""
        ahead = req.num_output_tokens + req.num_pending
        return (
            ahead >= req.sampling.max_tokens
            or req.num_tokens + req.num_pending >= self.max_model_len
        )

    def _free_deferred(self) -> None:
        for req in self._deferred_frees:
            self.kv.free(req)
        self._deferred_frees.clear()

    def _stop_reason(self, req: SchedRequest, token_id: int) -> FinishReason | None:
        sampling = req.sampling
        num_tokens = len(req.token_ids)
        num_output = num_tokens - req.prompt_len
        if num_output >= sampling.min_tokens and (
            (not sampling.ignore_eos and token_id in req.eos_token_ids)
            or token_id in sampling.stop_token_ids
        ):
            return FinishReason.STOP
        if num_output >= sampling.max_tokens or num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def _event(self, req, token_ids, reason, logprob) -> TokenEvent:
        first = len(req.token_ids) - req.prompt_len == len(token_ids)
        wants_prompt_logprobs = req.sampling.prompt_logprobs is not None
        return TokenEvent(
            req.request_id,
            token_ids,
            reason,
            (logprob,) if logprob is not None else (),
            tuple(req.prompt_logprobs) if first and wants_prompt_logprobs else None,
            req.prompt_len,
            req.num_cached_tokens if req.num_cached_tokens > 0 else 0,
        )

    def _finish(self, req: SchedRequest, reason: FinishReason) -> None:
        status = req.status
        if status is _RUNNING:
            self.running.remove(req)
        elif status is _WAITING_FOR_KV:
            del self.receiving[req.request_id]
        else:
            self.waiting.remove(req)
            self._num_waiting_tokens -= req.num_tokens
        keep_for_sending = req.kv_role is _SEND and (reason is _STOP or reason is _LENGTH)
        if keep_for_sending:
            req.status = RequestStatus.SENDING_KV
            self.sending[req.request_id] = req
        else:
            if req.num_pending:  # a step still running writes its blocks
                self._deferred_frees.append(req)
            else:
                self.kv.free(req)
            req.status = _FINISHED
        req.finish_reason = reason
        del self.requests[req.request_id]
        self._finished_ids.append(req.request_id)
        finished, value = self.stats.finished, reason._value_  # `.value` is a slow property
        finished[value] = finished.get(value, 0) + 1
