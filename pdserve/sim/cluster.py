"""`SimCluster`: a fleet of `SimInstance`s behind the REAL routing policies and the REAL global
prefix index, driven by the event loop. Produces one `metrics.RequestTimeline` per request.

What the controller sees is what a real one would: each instance publishes its snapshot and its
KV events (numbered batches into `PrefixIndex`) at the end of every step; requests routed since
are added to the view with `policies.add_pending`.

PD disaggregation is the controller's hand-off (cluster/pd_router.py) on the schedulers' PD
states, with messages taking no time:
    1. the pair: `cluster.pd_policy.choose_pd` on the views (decode by KV headroom, prefill by
       estimated TTFT + transfer; in mode "cost" the request may run fused on the decode side);
    2. the decode instance gets the request as RECEIVE: its next schedule reserves blocks for the
       uncached prompt (WAITING_FOR_KV), published at that step's end;
    3. the prefill instance gets it as SEND with max_tokens=1; its token is the first token (TTFT
       does not wait for the KV). Each chunk's KV crosses the network (`network.Network`) as the
       chunk's step ends, so the transfer overlaps the prefill and only the last chunk's shows
       (the engine streams that one per layer: here it is sent whole, after the step);
    4. once the last chunk has landed the prefill side frees its blocks (`release_kv`) and the
       decode side continues from the prompt's end (`finish_receiving`), its repeat of the
       first token dropped. A prefill instance lost before that: the decode side recomputes.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, field

from pdserve.bench.workload import BenchRequest
from pdserve.cluster.cost_model import Link
from pdserve.cluster.pd_policy import Candidate, choose_pd
from pdserve.cluster.policies import PolicyConfig, Ttft, add_pending, admit, make_policy
from pdserve.cluster.prefix_index import PrefixIndex
from pdserve.hashing import hash_blocks
from pdserve.metrics import RequestTimeline
from pdserve.sim.events import (
    Arrival,
    EventLoop,
    InstanceFailure,
    InstanceRestart,
    StepEnd,
    StepStart,
    TransferDone,
)
from pdserve.sim.instance import SIM_TOKEN_ID, SimInstance
from pdserve.sim.network import Network, Topology
from pdserve.sim.trace import ChromeTrace
from pdserve.types import KVReservation, KVRole, Request, SamplingParams, TokenEvent

PREFILL_SUFFIX = "@prefill"  # a hand-off's SEND request id, as the controller names it


@dataclass(frozen=True, slots=True)
class SimConfig:
    routing: str = "ttft"  # policy of a fused fleet
    # PD fleets pair instances as the controller does (cluster.pd_router.PDConfig's fields):
    pd_disaggregation: str = "cost"  # "cost" | "always" | "never" (cluster.pd_policy.MODES)
    max_decode_step_s: float = 0.05  # "cost": the decode side's running sequences' TBT budget
    policy: PolicyConfig = PolicyConfig()
    topology: Topology = Topology()
    slo_ttft_s: float | None = None  # SLO admission: refuse when the estimate misses it
    max_retries: int = 1  # re-routes of a request whose instance died before its first token
    failures: tuple[tuple[float, str, float], ...] = ()  # (time_s, instance_id, downtime_s)
    record_plans: bool = False  # keep every (start_s, plan.summary()) per instance
    # Serving costs outside the step-time profile (measured by benchmarks/bench_sim_fidelity.py):
    # a request reaches its instance's scheduler this long after it was sent (HTTP, routing, the
    # worker hop, and the way back of its tokens, lumped on the way in) ...
    request_overhead_s: float = 0.0
    # ... and each step takes this much host time beyond the engine's step (the worker loop).
    step_overhead_s: float = 0.0
    trace: bool = False  # Chrome-trace events (steps, transfers, faults)


# Both `__init__`s written out: the mypyc build (benchmarks/build_sim_fast.py) compiles them.
@dataclass(slots=True, eq=False, init=False)
class _ReqState:
    bench: BenchRequest
    timeline: RequestTimeline
    num_retries: int
    stage: str  # "fused" | "reserve" | "prefill" | "transfer" | "decode"

    def __init__(
        self, bench: BenchRequest, timeline: RequestTimeline, num_retries: int = 0,
        stage: str = "fused",
    ) -> None:  # fmt: skip
        self.bench = bench
        self.timeline = timeline
        self.num_retries = num_retries
        self.stage = stage


@dataclass(slots=True, eq=False, init=False)
class _Handoff:
    """One request's PD hand-off from `src` (prefill) to `dst` (decode)."""

    state: _ReqState
    src: SimInstance
    dst: SimInstance
    hashes: tuple[int, ...]
    src_incarnation: int
    dst_incarnation: int
    num_cached_tokens: int  # leading prompt tokens the decode side holds (its reservation)
    landed_s: float  # when the KV sent so far has landed
    skip_first: bool  # the first token was delivered: the decode side repeats it

    def __init__(
        self, state: _ReqState, src: SimInstance, dst: SimInstance, hashes: tuple[int, ...],
        src_incarnation: int, dst_incarnation: int,
    ) -> None:  # fmt: skip
        self.state = state
        self.src = src
        self.dst = dst
        self.hashes = hashes
        self.src_incarnation = src_incarnation
        self.dst_incarnation = dst_incarnation
        self.num_cached_tokens = 0
        self.landed_s = 0.0
        self.skip_first = False


@dataclass(slots=True)
class SimResult:
    timelines: list[RequestTimeline]
    duration_s: float  # first arrival to last token
    num_events: int
    plans: dict[str, list[tuple[float, tuple]]] = field(default_factory=dict)
    trace: list[dict] | None = None
    instances: list[SimInstance] = field(default_factory=list)


class SimCluster:
    def __init__(
        self,
        instances: Sequence[SimInstance],
        config: SimConfig = SimConfig(),
        kv_bytes_per_token: int = 0,
    ):
        self.instances = list(instances)
        self.by_id = {inst.instance_id: inst for inst in self.instances}
        self.config = config
        self.kv_bytes_per_token = kv_bytes_per_token
        self.policy = make_policy(config.routing, config.policy)
        self.index = PrefixIndex()
        self.network = Network(config.topology)
        self.loop = EventLoop()
        self.trace = ChromeTrace(self.instances) if config.trace else None
        self.plans: dict[str, list] = {i.instance_id: [] for i in self.instances}
        self.block_size = self.instances[0].scheduler.block_size
        self._reqs: dict[str, _ReqState] = {}
        self._next_turn: dict[tuple[int, int], BenchRequest] = {}  # (session, turn) -> request
        self._sampling: dict[int, SamplingParams] = {}
        self.is_pd = any(i.role == "prefill" for i in self.instances)
        self._live_by_role: dict[str, list[SimInstance]] = {}  # cleared when one dies or returns
        self._handoffs: dict[str, _Handoff] = {}  # request id -> its hand-off, until it lands
        self._pd_steps = Ttft(config.policy)  # step-time fits per role and kind, as pd_router's
        self._links: dict[tuple[str, str], Link] = {}
        # The prefix index is fed only for a policy that reads it (and the PD pairing does).
        self.feeds_index = self.policy.needs_prefix or self.is_pd
        for inst in self.instances:
            inst.emit_kv_events(self.feeds_index)
        self.is_lazy = False  # set by `run`: see `_run_lazy`
        self._num_lazy_fired = 0

    # ---- running -------------------------------------------------------------------------

    def run(self, requests: Sequence[BenchRequest]) -> SimResult:
        # A run allocates millions of small objects and no reference cycles (none were ever
        # collected): the cyclic collector's passes over the growing heap are pure overhead,
        # from the first request's state on (building them for 1M requests set off
        # collections too, ~5 % of a 300k run).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run(requests)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _run(self, requests: Sequence[BenchRequest]) -> SimResult:
        arrivals = []
        for req in requests:
            self._reqs[req.request_id] = _ReqState(
                req, RequestTimeline(req.arrival_s, req.prompt_len)
            )
            if req.session_id is not None and req.turn > 0:
                self._next_turn[(req.session_id, req.turn)] = req  # sent when turn - 1 ends
            else:
                arrivals.append((req.arrival_s + self.config.request_overhead_s, Arrival(req)))
        arrivals.sort(key=lambda a: a[0])  # stable: ties keep the workload's order
        self.loop.preload(arrivals)
        for time_s, instance_id, downtime_s in self.config.failures:
            self.loop.push(time_s, InstanceFailure(self.by_id[instance_id]))
            self.loop.push(time_s + downtime_s, InstanceRestart(self.by_id[instance_id]))
        self.is_lazy = self._can_run_lazy(requests)
        if self.is_lazy:
            self._run_lazy(arrivals)
        else:
            self.loop.run(self)
        timelines = [self._reqs[r.request_id].timeline for r in requests]
        start = min((t.send_s for t in timelines), default=0.0)
        end = max((t.end_s or t.send_s for t in timelines), default=0.0)
        return SimResult(
            timelines,
            max(end - start, 1e-9),
            self.loop.num_fired,
            self.plans,
            self.trace.events if self.trace else None,
            self.instances,
        )

    def _sampling_for(self, max_tokens: int) -> SamplingParams:
        params = self._sampling.get(max_tokens)
        if params is None:
            params = self._sampling[max_tokens] = SamplingParams(max_tokens, ignore_eos=True)
        return params

    def _submit(self, inst: SimInstance, req: Request, now: float) -> None:
        if self.is_lazy:
            if inst.next_s < now:
                self._advance(inst, now)
            inst.scheduler.add_request(req)
            inst.add_pending(len(req.prompt_token_ids))
            if not inst.is_busy and not inst.kick_pending:
                inst.kick_pending = True
                inst.next_s = now
            return
        inst.scheduler.add_request(req)
        view = inst.view
        assert view is not None  # an eager run publishes every step
        inst.view = add_pending(view, len(req.prompt_token_ids))
        if not inst.is_busy and not inst.kick_pending:
            inst.kick_pending = True
            self.loop.push(now, StepStart(inst))

    def _start(self, inst: SimInstance, now: float) -> None:
        duration_s = inst.start_step(now) + self.config.step_overhead_s
        if self.config.record_plans:
            assert inst.plan is not None
            self.plans[inst.instance_id].append((now, inst.plan.summary()))
        if self.trace is not None:
            self.trace.step(inst, inst.plan, now, duration_s)
        if self.is_lazy:
            inst.next_s = now + duration_s
        else:
            self.loop.push(now + duration_s, StepEnd(inst, inst.incarnation))

    # ---- lazy runs -----------------------------------------------------------------------

    def _can_run_lazy(self, requests: Sequence[BenchRequest]) -> bool:
        """Whether instances may be advanced one at a time (`_run_lazy`): they then interact
        only through the views a routing decision reads. Not when the prefix index is read (it
        needs every instance's KV events up to the arrival), nor with PD hand-offs, failures,
        follow-up turns (events that one instance's step sends to others) or a trace (whose
        event order would change)."""
        return (
            not self.feeds_index
            and not self.is_pd
            and not self.config.failures
            and self.trace is None
            and not self._next_turn
            and all(r.session_id is None for r in requests)
        )

    def _run_lazy(self, arrivals: list[tuple[float, Arrival]]) -> None:
        """The event loop's results, firing each instance's events only when needed.

        An instance's state depends only on its own events (step ends, kicks) and on the
        requests routed to it; other instances see it only through its view, read when a
        request is routed. So the arrivals are taken in order and an instance is brought up to
        an arrival's time (its events strictly earlier: at equal times arrivals fire first)
        only when the routing policy reads its view (`_LazyViews`) or the request goes to it;
        the rest is run at the end. An instance keeps its one pending event in `next_s`, and
        its snapshots as tuples (`SimInstance.capture`), built only when a policy reads them.
        The heap, most snapshots and most `add_pending` copies are never made."""
        views = _LazyViews(self, self._live("fused"))
        for time_s, arrival in arrivals:
            views.now = time_s
            self._num_lazy_fired += 1
            self.on_arrival(arrival.req, time_s, views)
        for inst in self.instances:
            self._advance(inst, float("inf"))
            inst.view = inst.current_view()
        self.loop.num_fired += self._num_lazy_fired

    def _advance(self, inst: SimInstance, until_s: float) -> None:
        """Fire the instance's events before `until_s` (each start schedules the next end):
        `on_step_end` and `on_step_start` as a lazy run has them (no failures, no trace, no KV
        events), in one loop: this is where a large run spends its time."""
        if inst.next_s >= until_s:
            return
        step_overhead_s = self.config.step_overhead_s
        plans = self.plans[inst.instance_id] if self.config.record_plans else None
        num_fired = 0
        while inst.next_s < until_s:
            now = inst.next_s
            num_fired += 1
            if inst.is_busy:
                self._take_events(inst, inst.end_step(now), now)
                inst.capture(now)
            else:
                inst.kick_pending = False
            if inst.scheduler.requests:  # has_unfinished: the next step starts now
                duration_s = inst.start_step(now) + step_overhead_s
                if plans is not None:
                    assert inst.plan is not None
                    plans.append((now, inst.plan.summary()))
                inst.next_s = now + duration_s
            else:
                inst.next_s = float("inf")
        self._num_lazy_fired += num_fired

    # ---- events --------------------------------------------------------------------------

    def on_arrival(self, bench: BenchRequest, now: float, views: Sequence | None = None) -> None:
        """Route and queue one request; `views`: the candidates' views (lazy runs)."""
        state = self._reqs[bench.request_id]
        # Hashed once here: the index lookup and the instance's scheduler share the hashes.
        hashes = tuple(hash_blocks(bench.prompt_token_ids, self.block_size))
        if self.is_pd:
            self._route_pd(state, hashes, now)
            return
        candidates = self._live("fused")
        if not candidates:
            self._fail(state, now, "no live instance")
            return
        matched = self.index.longest_prefix(hashes) if self.policy.needs_prefix else {}
        req = Request(bench.request_id, bench.prompt_token_ids,
                      self._sampling_for(bench.output_len), now, block_hashes=hashes)  # fmt: skip
        if views is None:
            views = [i.view for i in candidates]
        decision = self.policy.route(req, views, now, matched)
        if not admit(decision, self.config.slo_ttft_s):
            self._fail(state, now, "429: the TTFT SLO cannot be met")
            return
        state.stage = "fused"
        self._submit(self.by_id[decision.instance_id], req, now)

    def _route_pd(self, state: _ReqState, hashes: tuple[int, ...], now: float) -> None:
        """Pair the request (`choose_pd`) and start its hand-off, or run it fused on the decode
        instance when the pairing says so."""
        bench = state.bench
        decodes = self._live("decode")
        if not decodes:
            self._fail(state, now, "no live decode instance")
            return
        matched = self.index.longest_prefix(hashes)

        def candidates(insts: list[SimInstance]) -> list[Candidate]:
            out = []
            for inst in insts:
                view = inst.view
                assert view is not None  # an eager run publishes every step
                model = self._pd_steps.observe(view)
                out.append(Candidate(view, model.step_time, matched.get(inst.instance_id, 0)))
            return out

        choice = choose_pd(
            bench.prompt_len, bench.output_len, candidates(self._live("prefill")),
            candidates(decodes), self.kv_bytes_per_token * self.block_size, self._link,
            self.config.policy.max_batched_tokens, self.config.pd_disaggregation,
            self.config.max_decode_step_s,
        )  # fmt: skip
        if self.config.slo_ttft_s is not None and choice.est_ttft_s > self.config.slo_ttft_s:
            self._fail(state, now, "429: the TTFT SLO cannot be met")
            return
        dst = self.by_id[choice.decode_id]
        sampling = self._sampling_for(bench.output_len)
        if choice.prefill_id is None:
            state.stage = "fused"
            req = Request(bench.request_id, bench.prompt_token_ids, sampling, now,
                          block_hashes=hashes)  # fmt: skip
        else:
            src = self.by_id[choice.prefill_id]
            state.stage = "reserve"
            self._handoffs[bench.request_id] = _Handoff(
                state, src, dst, hashes, src.incarnation, dst.incarnation
            )
            req = Request(bench.request_id, bench.prompt_token_ids, sampling, now,
                          block_hashes=hashes, kv_role=KVRole.RECEIVE)  # fmt: skip
        self._submit(dst, req, now)

    def _link(self, prefill_id: str, decode_id: str) -> Link:
        link = self._links.get((prefill_id, decode_id))
        if link is None:
            src, dst = self.by_id[prefill_id], self.by_id[decode_id]
            net = self.config.topology.link(src.index, dst.index)
            link = Link(net.bandwidth_gbps * 1e9, net.latency_s)
            self._links[prefill_id, decode_id] = link
        return link

    def on_step_start(self, inst: SimInstance, now: float) -> None:
        inst.kick_pending = False
        if inst.is_alive and not inst.is_busy and inst.has_work:
            self._start(inst, now)

    def on_step_end(self, inst: SimInstance, now: float) -> None:
        if self._handoffs and inst.role == "prefill":
            plan = inst.ending_plan
            if plan is not None:
                self._send_chunks(inst, plan, now)
        self._take_events(inst, inst.end_step(now), now)
        if inst.role == "decode":
            for reservation in inst.scheduler.drain_kv_reservations():
                self._on_reserved(reservation, now)
        if self.is_lazy:
            inst.capture(now)  # feeds_index is off: no KV events
        else:
            inst.publish(now)
            kv_events = inst.scheduler.drain_kv_events()
            if kv_events:  # a step that stored or evicted nothing sends no batch
                self.index.apply(inst.instance_id, inst.kv_seq_no, kv_events)
                inst.kv_seq_no += 1
        # A step with nothing to compute waits for a kick (a request, KV landing, blocks freed):
        # blocks held by hand-offs are freed only by later events.
        if inst.has_work and inst.progressed:
            self._start(inst, now)

    def _kick(self, inst: SimInstance, now: float) -> None:
        if inst.is_alive and not inst.is_busy and not inst.kick_pending:
            inst.kick_pending = True
            self.loop.push(now, StepStart(inst))

    def _take_events(self, inst: SimInstance, events: list[TokenEvent], now: float) -> None:
        """A step's token events into the request timelines; finished requests end (or, on a
        prefill instance, their hand-off goes on: `on_transfer_done`)."""
        reqs = self._reqs
        for event in events:
            state = reqs[event.request_id]
            tl = state.timeline
            if event.new_token_ids:
                if state.stage == "decode" and self._handoffs:
                    handoff = self._handoffs.get(state.bench.request_id)
                    if handoff is not None and handoff.skip_first:  # the first token, again
                        del self._handoffs[state.bench.request_id]
                        if event.finish_reason is not None:
                            self._finish(state, now)
                        continue
                tl.token_times_s.append(now)
                tl.num_output_tokens += len(event.new_token_ids)
            if event.finish_reason is not None:
                if state.stage == "prefill":
                    self._prefilled(self._handoffs[state.bench.request_id], now)
                else:
                    self._finish(state, now)

    # ---- PD hand-offs --------------------------------------------------------------------

    def _on_reserved(self, reservation: KVReservation, now: float) -> None:
        """The decode side reserved blocks: the prefill side gets the request (SEND)."""
        handoff = self._handoffs[reservation.request_id]
        handoff.num_cached_tokens = reservation.num_cached_tokens
        state, src = handoff.state, handoff.src
        if not src.is_alive or src.incarnation != handoff.src_incarnation:
            self._recompute_on_decode(handoff, now)
            return
        bench = state.bench
        state.stage = "prefill"
        prid = bench.request_id + PREFILL_SUFFIX
        self._reqs[prid] = state
        req = Request(prid, bench.prompt_token_ids, self._sampling_for(1), now,
                      block_hashes=handoff.hashes, kv_role=KVRole.SEND)  # fmt: skip
        self._submit(src, req, now)

    def _send_chunks(self, inst: SimInstance, plan, now: float) -> None:
        """A prefill step ends: the KV of each hand-off's chunk that the decode side lacks
        leaves for it (after the chunks before it, on the same link)."""
        for seq in plan.seqs:
            if seq.request.kv_role is not KVRole.SEND:
                continue
            handoff = self._handoffs[seq.request.request_id[: -len(PREFILL_SUFFIX)]]
            begin = max(seq.num_computed_tokens, handoff.num_cached_tokens)
            num_tokens = seq.num_computed_tokens + seq.num_new_tokens - begin
            if num_tokens <= 0:
                continue
            num_bytes = num_tokens * self.kv_bytes_per_token
            start_s, done_s = self.network.transfer(inst.index, handoff.dst.index, num_bytes, now)
            handoff.landed_s = max(handoff.landed_s, done_s)
            if self.trace is not None:
                self.trace.transfer(inst, handoff.dst, handoff.state.bench.request_id, start_s,
                                    done_s, num_bytes)  # fmt: skip

    def _prefilled(self, handoff: _Handoff, now: float) -> None:
        """The prefill side's token is out (the first token): the hand-off completes when the
        last chunk's KV has landed."""
        handoff.state.stage = "transfer"
        handoff.skip_first = True
        self.loop.push(max(now, handoff.landed_s), TransferDone(handoff))

    def on_transfer_done(self, handoff: _Handoff, now: float) -> None:
        state, src, dst = handoff.state, handoff.src, handoff.dst
        if self._handoffs.get(state.bench.request_id) is not handoff:
            return  # a lost instance ended it meanwhile
        if src.incarnation == handoff.src_incarnation:
            src.scheduler.release_kv(state.bench.request_id + PREFILL_SUFFIX)
            self._kick(src, now)  # its freed blocks may admit a waiting prompt
        state.stage = "decode"
        self._take_events(dst, dst.scheduler.finish_receiving(state.bench.request_id,
                                                              SIM_TOKEN_ID), now)  # fmt: skip
        self._kick(dst, now)

    def _recompute_on_decode(self, handoff: _Handoff, now: float) -> None:
        """The prefill side is lost before the KV landed: the decode side computes the prompt
        (the first token, if it was out, is not delivered twice)."""
        state = handoff.state
        skip_first = state.stage == "transfer"
        state.stage = "decode"
        handoff.skip_first = skip_first
        if not skip_first:
            del self._handoffs[state.bench.request_id]
        handoff.dst.scheduler.finish_receiving(state.bench.request_id, None)
        self._kick(handoff.dst, now)

    def on_failure(self, inst: SimInstance, now: float) -> None:
        """The instance dies: requests without a token are retried elsewhere (up to
        max_retries), the others end with an error; its index entries go."""
        inst.is_alive = False
        inst.incarnation += 1
        self._live_by_role.clear()
        for handoff in list(self._handoffs.values()):
            if handoff.src is inst and handoff.state.stage in ("prefill", "transfer"):
                self._recompute_on_decode(handoff, now)
        for request_id in list(inst.scheduler.requests):
            if request_id.endswith(PREFILL_SUFFIX):
                continue  # its decode side recomputes (above)
            state = self._reqs[request_id]
            pending = self._handoffs.get(request_id)
            if pending is not None:
                del self._handoffs[request_id]
                if pending.src.incarnation == pending.src_incarnation:  # nobody to send to
                    pending.src.scheduler.finish(request_id + PREFILL_SUFFIX)
                    self._kick(pending.src, now)
            if not state.timeline.token_times_s and state.num_retries < self.config.max_retries:
                state.num_retries += 1
                self.loop.push(now, Arrival(state.bench))
            else:
                self._fail(state, now, f"instance {inst.instance_id} failed")
        self.index.drop_instance(inst.instance_id)
        if self.trace is not None:
            self.trace.instant(inst, "failure", now)

    def on_restart(self, inst: SimInstance, now: float) -> None:
        inst.restart()
        inst.is_alive = True
        self._live_by_role.clear()
        inst.publish(now)
        self.index.replace_instance(inst.instance_id, [], 0)
        if self.trace is not None:
            self.trace.instant(inst, "restart", now)

    def _live(self, role: str) -> list[SimInstance]:
        """The live instances of a role, in fleet order (do not mutate)."""
        live = self._live_by_role.get(role)
        if live is None:
            live = [i for i in self.instances if i.is_alive and i.role == role]
            self._live_by_role[role] = live
        return live

    # ---- request ends --------------------------------------------------------------------

    def _finish(self, state: _ReqState, now: float) -> None:
        state.timeline.end_s = now
        state.timeline.is_success = True
        self._release_next_turn(state, now)

    def _fail(self, state: _ReqState, now: float, error: str) -> None:
        state.timeline.end_s = now
        state.timeline.error = error
        self._release_next_turn(state, now)

    def _release_next_turn(self, state: _ReqState, now: float) -> None:
        bench = state.bench
        if bench.session_id is None:
            return
        nxt = self._next_turn.pop((bench.session_id, bench.turn + 1), None)
        if nxt is not None:
            send_s = max(now, nxt.arrival_s)
            self._reqs[nxt.request_id].timeline.send_s = send_s
            self.loop.push(send_s + self.config.request_overhead_s, Arrival(nxt))


class _LazyViews(Sequence):
    """The candidates' views for one routing decision of a lazy run: reading one brings its
    instance up to `now` first (`SimCluster._advance`), so the policy sees exactly what the
    eager loop would show it."""

    def __init__(self, sim: SimCluster, instances: list[SimInstance]):
        self.sim, self.instances, self.now = sim, instances, 0.0

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self.instances)))]
        inst = self.instances[i]
        if inst.next_s < self.now:
            self.sim._advance(inst, self.now)
        view = inst.view
        if view is None or inst.num_view_pending != len(inst.pending):
            view = inst.current_view()
        return view

    def __iter__(self):
        for k in range(len(self.instances)):
            yield self[k]
