"""`SimInstance`: one simulated instance = the real `sched.Scheduler` + a timed executor.

The executor stands in for the model: it samples a fixed token (outputs never matter to the
simulation: workloads run with ignore_eos and fixed output lengths) and prices the step with a
step-time function of the plan. A plan with nothing to compute takes no time (the engine does
not launch it); KV that arrives by transfer is never in a plan (`Scheduler.finish_receiving`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

from pdserve.cluster.cost_model import StepCostModel
from pdserve.cluster.policies import add_pending
from pdserve.sched.plan import StepPlan, StepResult
from pdserve.sched.scheduler import Scheduler
from pdserve.sim.profiles import AsyncPipeline, ServedCostModel
from pdserve.types import InstanceSnapshot

SIM_TOKEN_ID: Final = 11  # every sampled token; never an EOS in the bench vocabulary (ids >= 10)


class CostExecutor:
    """`sched.plan.Executor` whose step takes `step_time(plan)` seconds (or the cost model's)."""

    def __init__(
        self,
        cost: StepCostModel | None = None,
        step_time: Callable[[StepPlan], float] | None = None,
    ):
        if (cost is None) == (step_time is None):
            raise ValueError("give exactly one of cost or step_time")
        self.cost = cost
        self.step_time = step_time
        # A cost model that is not the linear sum (sim.profiles.ServedCostModel) prices a shape
        self.shape_time = getattr(cost, "shape_time", None)
        self.overlap_s = 0.0  # the step before, when this one starts as it ends (SimInstance)

    def execute(self, plan: StepPlan) -> StepResult:
        sampled = {s.request.request_id: SIM_TOKEN_ID for s in plan.seqs if s.samples}
        if not plan.seqs:
            return StepResult(sampled, {}, {}, 0.0)
        if self.step_time is not None:
            return StepResult(sampled, {}, {}, self.step_time(plan))
        p_tok, p_pairs, d_seqs, d_ctx = self._shape(plan)
        if self.shape_time is not None:
            duration_s = self.shape_time(p_tok, p_pairs, d_seqs, d_ctx, self.overlap_s)
            return StepResult(sampled, {}, {}, duration_s)
        c = self.cost  # StepCostModel.step_time, without building a StepShape per step
        assert c is not None
        duration_s = (c.base_s + c.per_prefill_token_s * p_tok + c.per_prefill_pair_s * p_pairs
                      + c.per_decode_seq_s * d_seqs + c.per_decode_ctx_token_s * d_ctx)  # fmt: skip
        return StepResult(sampled, {}, {}, duration_s)

    def _shape(self, plan: StepPlan) -> tuple[int, int, int, int]:
        """`StepShape` fields: prefill tokens, prefill pairs, decode seqs, decode context."""
        p_tok = p_pairs = d_seqs = d_ctx = 0
        for seq in plan.seqs:
            done, new = seq.num_computed_tokens, seq.num_new_tokens
            if new > 1 or done + new <= seq.request.prompt_len:
                p_tok += new
                p_pairs += new * done + new * (new + 1) // 2
            else:
                d_seqs += 1
                d_ctx += done + 1
        return p_tok, p_pairs, d_seqs, d_ctx


class SimInstance:
    """Scheduler + executor + what the controller sees of it (published per step)."""

    __slots__ = (
        "index",
        "instance_id",
        "role",
        "scheduler",
        "executor",
        "make_scheduler",
        "is_busy",
        "is_alive",
        "incarnation",
        "plan",
        "result",
        "view",
        "kv_seq_no",
        "num_steps",
        "busy_s",
        "step_start_s",
        "kick_pending",
        "gpu",
        "emits_kv_events",
        "next_s",
        "published",
        "pending",
        "num_view_pending",
        "pipeline",
        "in_flight",
        "collected",
        "jitter",
        "progressed",
    )

    def __init__(
        self,
        index: int,
        instance_id: str,
        make_scheduler: Callable[[], Scheduler],
        executor: CostExecutor,
        role: str = "fused",
        gpu: str = "",
    ):
        self.index = index
        self.instance_id = instance_id
        self.role = role
        self.gpu = gpu
        self.make_scheduler = make_scheduler
        self.emits_kv_events = True
        self.scheduler = make_scheduler()
        self.executor = executor
        self.is_busy = False
        self.is_alive = True
        self.incarnation = 0
        self.plan: StepPlan | None = None
        self.result: StepResult | None = None
        self.kv_seq_no = 0  # number of the next KV event batch
        self.num_steps = 0
        self.busy_s = 0.0
        self.step_start_s = 0.0
        self.kick_pending = False
        # Lazy runs (SimCluster advances each instance only as far as someone looks at it):
        self.next_s = float("inf")  # time of its pending event: its step's end, or a kick
        self.published: tuple | None = None  # (load, time, step time, step tokens) of `capture`
        self.pending: list[int] = []  # prompt lengths of requests routed here since then
        self.num_view_pending = 0  # how many of them `view` already counts
        # An engine with async scheduling (a pipelined model with measured host launches,
        # `profiles.ServedCostModel.fit_split`): the step in flight (plan, result, when the
        # device ends it) and the one the next step end applies.
        cost = executor.cost
        self.pipeline: AsyncPipeline | None = None
        if isinstance(cost, ServedCostModel) and cost.pipelined and cost.graph_launch_s > 0:
            self.pipeline = AsyncPipeline(cost)
        self.in_flight: tuple[StepPlan, StepResult, float] | None = None
        self.collected: tuple[StepPlan, StepResult, float] | None = None
        self.jitter: random.Random | None = None  # draws host launch times when set
        # Whether the step started last changed anything (scheduled, preempted or collected):
        # one that did not waits for a kick (a request, KV landing, blocks freed) to run again.
        self.progressed = False
        self.view: InstanceSnapshot | None = self.publish(0.0)

    @property
    def has_work(self) -> bool:
        """Something to compute (the worker's rule): requests waiting for KV from another
        instance alone run no steps."""
        sched = self.scheduler
        return len(sched.requests) > len(sched.receiving) or self.in_flight is not None

    @property
    def ending_plan(self) -> StepPlan | None:
        """The plan whose tokens the step now ending applies (async: the one it collects)."""
        if self.pipeline is not None:
            return self.collected[0] if self.collected is not None else None
        return self.plan

    def start_step(self, now: float) -> float:
        """Schedule and price one step; returns its duration in seconds."""
        if self.pipeline is not None:
            return self._start_async(now, self.pipeline)
        plan = self.plan = self.scheduler.schedule(now)
        self.progressed = bool(plan.seqs or plan.preempted_ids)
        if self.executor.shape_time is not None:  # the only cost model that reads the overlap
            last = self.result  # a pipelined engine launched this step while that one ran
            overlap_s = 0.0
            if last is not None and now - self.step_start_s - last.duration_s <= 1e-9:
                overlap_s = last.duration_s  # back to back
            self.executor.overlap_s = overlap_s
        result = self.result = self.executor.execute(plan)
        self.is_busy = True
        self.step_start_s = now
        return result.duration_s

    def _start_async(self, now: float, pipeline: AsyncPipeline) -> float:
        """As `EngineCore._step_async`: schedule and launch the next step, then wait for the
        one in flight (`AsyncPipeline`); the duration runs to when that one's tokens are out,
        or to the end of the launch when none was in flight."""
        plan = self.plan = self.scheduler.schedule(now)
        in_flight = self.collected = self.in_flight
        self.progressed = bool(plan.seqs or plan.preempted_ids or in_flight is not None)
        self.is_busy = True
        self.step_start_s = now
        if plan.is_empty and in_flight is None:  # nothing to launch or collect
            result = self.result = self.executor.execute(plan)
            return result.duration_s
        launched_s = now
        self.in_flight = None
        if not plan.is_empty:
            result = self.result = self.executor.execute(plan)
            u = self.jitter.random() if self.jitter is not None else None
            launched_s, device_end_s = pipeline.launch(now, self.executor._shape(plan), u)
            self.in_flight = (plan, result, device_end_s)
        if in_flight is None:
            return launched_s - now
        self.result = in_flight[1]
        return pipeline.collected_s(launched_s, in_flight[2]) - now

    def end_step(self, now: float):
        """Apply the step's tokens; returns the scheduler's TokenEvents."""
        if self.pipeline is not None:  # the step collected, if any (`_start_async`)
            done, self.collected = self.collected, None
            events = self.scheduler.update(done[0], done[1], now) if done is not None else []
            self.is_busy = False
            self.num_steps += 1
            self.busy_s += now - self.step_start_s
            return events
        plan, result = self.plan, self.result
        assert plan is not None and result is not None
        events = self.scheduler.update(plan, result, now)
        self.is_busy = False
        self.num_steps += 1
        self.busy_s += now - self.step_start_s
        return events

    def publish(self, now: float) -> InstanceSnapshot:
        """The snapshot the controller gets after each step (as `EngineCore.snapshot`)."""
        plan, result = self.plan, self.result
        view = self.view = self.scheduler.snapshot(
            self.instance_id,
            now,
            step_time_s=result.duration_s if result is not None else 0.0,
            step_tokens=plan.num_batched_tokens if plan is not None else 0,
            role=self.role,
            incarnation=str(self.incarnation),
            kind=self.gpu,
        )
        return view

    def capture(self, now: float) -> None:
        """`publish`, lazily: keep what the snapshot would hold (a tuple) and build it only when
        `current_view` is asked for it (most steps' snapshots are never read)."""
        plan, result = self.plan, self.result
        assert plan is not None and result is not None
        self.published = (self.scheduler.load(), now, result.duration_s,
                          plan.num_batched_tokens)  # fmt: skip
        self.view = None
        self.pending.clear()

    def add_pending(self, num_tokens: int) -> None:
        """A request of `num_tokens` prompt tokens was routed here (lazy runs: `current_view`
        applies `policies.add_pending` when the view is read)."""
        self.pending.append(num_tokens)

    def current_view(self) -> InstanceSnapshot:
        """The controller's view as the eager loop keeps it in `view`: the snapshot published
        at the last step end, plus every request routed here since (`policies.add_pending`)."""
        view, pending = self.view, self.pending
        if view is None:
            assert self.published is not None
            load, now, step_time_s, step_tokens = self.published
            view = self.scheduler.snapshot_of(load, self.instance_id, now, step_time_s=step_time_s,
                                              step_tokens=step_tokens, role=self.role,
                                              incarnation=str(self.incarnation),
                                              kind=self.gpu)  # fmt: skip
            self.num_view_pending = 0
        if self.num_view_pending < len(pending):
            for num_tokens in pending[self.num_view_pending :]:
                view = add_pending(view, num_tokens)
            self.num_view_pending = len(pending)
        self.view = view
        return view

    def emit_kv_events(self, enabled: bool) -> None:
        """Whether the scheduler's prefix cache records KV events (now and after restarts)."""
        self.emits_kv_events = enabled
        self.scheduler.kv.prefix_cache.emits_events = enabled

    def restart(self) -> None:
        """A fresh process: empty scheduler and cache, a new incarnation."""
        self.scheduler = self.make_scheduler()
        self.scheduler.kv.prefix_cache.emits_events = self.emits_kv_events
        self.is_busy = self.kick_pending = False
        self.plan = self.result = None
        self.in_flight = self.collected = None
        if self.pipeline is not None:
            self.pipeline.device_free_s = 0.0
        self.kv_seq_no = 0
