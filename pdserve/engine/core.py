"""One instance's engine loop: step() = schedule -> execute -> update. Nothing else."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from pdserve.sched.plan import Executor, StepPlan
from pdserve.sched.scheduler import Scheduler
from pdserve.types import FinishReason, InstanceSnapshot, Request, TokenEvent


class EngineCore:
    """Not thread-safe: one loop owns it (the worker process, `LLM`, or a test)."""

    def __init__(
        self,
        scheduler: Scheduler,
        executor: Executor,
        clock: Callable[[], float] = time.monotonic,
        instance_id: str = "",
    ):
        self.scheduler = scheduler
        self.executor = executor
        self.clock = clock
        self.instance_id = instance_id
        self.last_plan: StepPlan | None = None
        self.last_step_s = 0.0

    def add_request(self, req: Request) -> None:
        """Queue a request; ValueError if it can never run (nothing is allocated then)."""
        self.scheduler.add_request(req)

    def abort(self, request_id: str, reason: FinishReason = FinishReason.ABORT) -> bool:
        return self.scheduler.finish(request_id, reason)

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    def step(self) -> list[TokenEvent]:
        start = self.clock()
        plan = self.scheduler.schedule(start)
        result = self.executor.execute(plan)
        events = self.scheduler.update(plan, result, self.clock())
        self.last_plan = plan
        self.last_step_s = result.duration_s
        return events

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
