"""One instance's engine loop: step() = schedule -> execute -> update. Nothing else."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from pdserve.sched.plan import Executor, StepPlan
from pdserve.sched.scheduler import Scheduler
from pdserve.types import FinishReason, InstanceSnapshot, Request, TokenEvent


class EngineCore:
    """Not thread-safe: one loop owns it (the worker process, `LLM`, or a test).

    With `async_scheduling` (an executor with `launch`/`collect`, e.g. the GPU runner), step N+1
    is scheduled and launched while the device still runs step N, and step N's tokens are
    applied after that: the scheduler's CPU work hides behind the device's. A decode seq of step
    N+1 then has a pending last token, which the executor feeds from step N's output on the
    device. Plans that need host-side results (logprobs, penalties, prompt logprobs) wait for
    the running step and execute synchronously; outputs are the same either way.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        executor: Executor,
        clock: Callable[[], float] = time.monotonic,
        instance_id: str = "",
        async_scheduling: bool = False,
    ):
        if async_scheduling and not hasattr(executor, "launch"):
            raise ValueError("async scheduling needs an executor with launch() and collect()")
        self.scheduler = scheduler
        self.executor = executor
        self.clock = clock
        self.instance_id = instance_id
        self.async_scheduling = async_scheduling
        self.last_plan: StepPlan | None = None
        self.last_step_s = 0.0
        self._in_flight: tuple[StepPlan, object] | None = None  # (plan, executor handle)
        self._last_collect_s: float | None = None

    def add_request(self, req: Request) -> None:
        """Queue a request; ValueError if it can never run (nothing is allocated then)."""
        self.scheduler.add_request(req)

    def abort(self, request_id: str, reason: FinishReason = FinishReason.ABORT) -> bool:
        return self.scheduler.finish(request_id, reason)

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished or self._in_flight is not None

    @property
    def has_step_in_flight(self) -> bool:
        return self._in_flight is not None

    def step(self) -> list[TokenEvent]:
        start = self.clock()
        plan = self.scheduler.schedule(start)
        if self.async_scheduling:
            return self._step_async(plan)
        result = self.executor.execute(plan)
        events = self.scheduler.update(plan, result, self.clock())
        self.last_plan = plan
        self.last_step_s = result.duration_s
        return events

    def _step_async(self, plan: StepPlan) -> list[TokenEvent]:
        if plan.is_empty or not self.executor.can_launch(plan):
            events = self._collect()  # nothing to overlap, or the plan needs known tokens
            result = self.executor.execute(plan)  # an empty plan still drops finished state
            events += self.scheduler.update(plan, result, self.clock())
            if not plan.is_empty:
                self.last_step_s = result.duration_s
        else:
            handle = self.executor.launch(plan)
            events = self._collect()
            self._in_flight = (plan, handle)
        if not plan.is_empty:
            self.last_plan = plan
        return events

    def _collect(self) -> list[TokenEvent]:
        """Wait for the running step and apply its tokens."""
        if self._in_flight is None:
            return []
        plan, handle = self._in_flight
        self._in_flight = None
        result = self.executor.collect(handle)
        now = self.clock()
        if self._last_collect_s is not None:  # one step's wall time, overlap included
            self.last_step_s = min(now - self._last_collect_s, result.duration_s)
        self._last_collect_s = now
        return self.scheduler.update(plan, result, now)

    def snapshot(self) -> InstanceSnapshot:
        snap = self.scheduler.snapshot(self.instance_id, self.clock())
        plan = self.last_plan
        return replace(
            snap,
            step_time_s=self.last_step_s,
            step_tokens=plan.num_batched_tokens if plan is not None else 0,
        )

    def check_integrity(self) -> None:
        self.scheduler.check_integrity()
