"""`SimCluster`: a fleet of `SimInstance`s behind the REAL routing policies and the REAL global
prefix index, driven by the event loop. Produces one `metrics.RequestTimeline` per request.

What the controller sees is what a real one would: each instance publishes its snapshot and its
KV events (numbered batches into `PrefixIndex`) at the end of every step; requests routed since
are added to the view with `policies.add_pending`.

PD disaggregation (until the scheduler has PD states; kept small on purpose):
    1. the prefill instance runs the request with max_tokens=1: its one token is the first token;
    2. the KV of the prompt crosses the network (`network.Network`, prompt_len x KV bytes/token);
    3. the decode instance gets prompt + first token with max_tokens = output_len - 1, and its
       executor prices the transferred prompt tokens at zero (they still take that step's token
       budget: the approximation to drop once the decode side can reserve remote KV).
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, field

from pdserve.bench.workload import BenchRequest
from pdserve.cluster.policies import PolicyConfig, add_pending, admit, make_policy
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
from pdserve.types import Request, SamplingParams, TokenEvent


@dataclass(frozen=True, slots=True)
class SimConfig:
    routing: str = "ttft"  # policy for fused and prefill instances
    decode_routing: str = "least_load"  # PD: policy choosing the decode instance
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
    stage: str  # "fused" | "prefill" | "transfer" | "decode"

    def __init__(
        self, bench: BenchRequest, timeline: RequestTimeline, num_retries: int = 0,
        stage: str = "fused",
    ) -> None:  # fmt: skip
        self.bench = bench
        self.timeline = timeline
        self.num_retries = num_retries
        self.stage = stage


@dataclass(slots=True, init=False)
class _Handoff:
    state: _ReqState
    src: SimInstance
    dst: SimInstance

    def __init__(self, state: _ReqState, src: SimInstance, dst: SimInstance) -> None:
        self.state = state
        self.src = src
        self.dst = dst


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
        self.decode_policy = make_policy(config.decode_routing, config.policy)
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
        # The prefix index is fed only for a policy that reads it (nothing else does).
        self.feeds_index = self.policy.needs_prefix
        for inst in self.instances:
            inst.emit_kv_events(self.feeds_index)
        self.is_lazy = False  # set by `run`: see `_run_lazy`
        self._num_lazy_fired = 0

    # ---- running -------------------------------------------------------------------------

    def run(self, requests: Sequence[BenchRequest]) -> SimResult:
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
        # A run allocates millions of small objects and no reference cycles (none were ever
        # collected): the cyclic collector's passes over the growing heap are pure overhead.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        self.is_lazy = self._can_run_lazy(requests)
        try:
            if self.is_lazy:
                self._run_lazy(arrivals)
            else:
                self.loop.run(self)
        finally:
            if gc_was_enabled:
                gc.enable()
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
        candidates = self._live("prefill" if self.is_pd else "fused")
        if not candidates:
            self._fail(state, now, "no live instance")
            return
        # Hashed once here: the index lookup and the instance's scheduler share the hashes.
        hashes = tuple(hash_blocks(bench.prompt_token_ids, self.block_size))
        matched = self.index.longest_prefix(hashes) if self.policy.needs_prefix else {}
        max_tokens = 1 if self.is_pd else bench.output_len
        req = Request(bench.request_id, bench.prompt_token_ids, self._sampling_for(max_tokens),
                      now, block_hashes=hashes)  # fmt: skip
        if views is None:
            views = [i.view for i in candidates]
        decision = self.policy.route(req, views, now, matched)
        if not admit(decision, self.config.slo_ttft_s):
            self._fail(state, now, "429: the TTFT SLO cannot be met")
            return
        state.stage = "prefill" if self.is_pd else "fused"
        self._submit(self.by_id[decision.instance_id], req, now)

    def on_step_start(self, inst: SimInstance, now: float) -> None:
        inst.kick_pending = False
        if inst.is_alive and not inst.is_busy and inst.scheduler.has_unfinished:
            self._start(inst, now)

    def on_step_end(self, inst: SimInstance, now: float) -> None:
        self._take_events(inst, inst.end_step(now), now)
        if self.is_lazy:
            inst.capture(now)  # feeds_index is off: no KV events
        else:
            inst.publish(now)
            kv_events = inst.scheduler.drain_kv_events()
            if kv_events:  # a step that stored or evicted nothing sends no batch
                self.index.apply(inst.instance_id, inst.kv_seq_no, kv_events)
                inst.kv_seq_no += 1
        if inst.scheduler.has_unfinished:
            self._start(inst, now)

    def _take_events(self, inst: SimInstance, events: list[TokenEvent], now: float) -> None:
        """A step's token events into the request timelines; finished requests end (or, on a
        prefill instance, go on to their decode instance)."""
        reqs = self._reqs
        for event in events:
            state = reqs[event.request_id]
            tl = state.timeline
            if event.new_token_ids:
                tl.token_times_s.append(now)
                tl.num_output_tokens += len(event.new_token_ids)
            if event.finish_reason is not None:
                if state.stage == "prefill" and state.bench.output_len > 1:
                    self._hand_off(state, inst, now)
                else:
                    self._finish(state, now)

    def _hand_off(self, state: _ReqState, src: SimInstance, now: float) -> None:
        decodes = self._live("decode")
        if not decodes:
            self._fail(state, now, "no live decode instance")
            return
        req = Request(state.bench.request_id, state.bench.prompt_token_ids, self._sampling_for(1))
        views: list = [i.view for i in decodes]  # an eager run: published, never None
        dst = self.by_id[self.decode_policy.route(req, views, now).instance_id]
        num_bytes = state.bench.prompt_len * self.kv_bytes_per_token
        start_s, done_s = self.network.transfer(src.index, dst.index, num_bytes, now)
        if self.trace is not None:
            self.trace.transfer(src, dst, state.bench.request_id, start_s, done_s, num_bytes)
        state.stage = "transfer"
        self.loop.push(done_s, TransferDone(_Handoff(state, src, dst)))

    def on_transfer_done(self, handoff: _Handoff, now: float) -> None:
        state, dst = handoff.state, handoff.dst
        if not dst.is_alive:
            self._hand_off(state, handoff.src, now)  # the KV is still on the prefill side
            return
        bench = state.bench
        req = Request(bench.request_id, bench.prompt_token_ids + (SIM_TOKEN_ID,),
                      self._sampling_for(bench.output_len - 1), now)  # fmt: skip
        dst.executor.remote_tokens[bench.request_id] = bench.prompt_len
        state.stage = "decode"
        self._submit(dst, req, now)

    def on_failure(self, inst: SimInstance, now: float) -> None:
        """The instance dies: requests without a token are retried elsewhere (up to
        max_retries), the others end with an error; its index entries go."""
        inst.is_alive = False
        inst.incarnation += 1
        self._live_by_role.clear()
        for request_id in list(inst.scheduler.requests):
            state = self._reqs[request_id]
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
