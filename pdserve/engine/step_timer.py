"""Optional per-step timing of the runner: where a step's wall time goes (profiling only).

    host: |-- prepare --|-- launch (enqueue kernels) --|  ...  |-- wait for the sampled ids --|
    GPU:                ^ span starts (event)    span ends (event) ^   (idle gap) ^ next span

CUDA events are read only in `resolve()`, after the run, or in `pop_waited()` for the steps
whose sampled ids the host already waited for (their events are complete then), so timing adds
no synchronization and works under async scheduling (where a step's wait happens after the next
step's launch). The gap before a step's GPU span is the time the GPU sat idle waiting for the
host. Disabled (the default) it costs one attribute check per mark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


@dataclass(slots=True)
class StepTiming:
    kind: str  # "graph" | "eager"
    num_seqs: int
    prepare_s: float
    launch_s: float
    wait_s: float = 0.0  # host blocked on this step's sampled ids
    gpu_span_s: float = 0.0  # first to last GPU work of the step
    gpu_gap_s: float = 0.0  # GPU idle between the previous step's span and this one's


@dataclass(slots=True)
class StepTimer:
    enabled: bool = False
    steps: list[StepTiming] = field(default_factory=list)
    _events: list[tuple] = field(default_factory=list)
    _num_waited: int = 0
    _marks: list[float] = field(default_factory=list)
    _kind: str = ""
    _num_seqs: int = 0
    _start_event: object = None
    _prev_end_event: object = None  # the last popped step's end (`pop_waited`'s gaps)
    num_launched: int = 0  # steps launched since enabled (a caller tells a new launch by it)
    last_launch_s: float = 0.0  # the last launched step's host time: prepare + launch

    def start(self, num_seqs: int) -> None:
        if self.enabled:
            self._marks = [time.perf_counter()]
            self._num_seqs = num_seqs

    def prepared(self, graph_size: int | None) -> None:
        if self.enabled:
            self._marks.append(time.perf_counter())
            self._kind = "graph" if graph_size else "eager"
            self._start_event = _record()

    def launched(self) -> None:
        if not self.enabled or len(self._marks) != 2:
            return
        t0, t1 = self._marks
        self.steps.append(StepTiming(self._kind, self._num_seqs, t1 - t0, time.perf_counter() - t1))
        self._events.append((self._start_event, _record()))
        self._marks = []
        self.num_launched += 1
        self.last_launch_s = self.steps[-1].prepare_s + self.steps[-1].launch_s

    def synced(self, wait_s: float) -> None:
        """The oldest step not yet waited for has its ids on the host after `wait_s`."""
        if self.enabled and self._num_waited < len(self.steps):
            self.steps[self._num_waited].wait_s = wait_s
            self._num_waited += 1

    def resolve(self) -> list[StepTiming]:
        """Read the GPU spans and gaps (synchronizes the device); -> the steps so far."""
        if torch.cuda.is_available() and self._events:
            torch.cuda.synchronize()
            prev_end = None
            for step, (begin, end) in zip(self.steps, self._events):
                step.gpu_span_s = begin.elapsed_time(end) / 1e3
                if prev_end is not None:
                    step.gpu_gap_s = max(prev_end.elapsed_time(begin) / 1e3, 0.0)
                prev_end = end
        return self.steps

    def pop_waited(self) -> list[StepTiming]:
        """The steps whose sampled ids the host has waited for, oldest first, with their GPU
        span and gap (read from their events, complete by then: no synchronization), taken
        out of the timer (a long run keeps only the steps in flight)."""
        n = self._num_waited
        done, events = self.steps[:n], self._events[:n]
        del self.steps[:n], self._events[:n]
        self._num_waited = 0
        for step, (begin, end) in zip(done, events):
            if begin is not None and end is not None and end.query():
                step.gpu_span_s = begin.elapsed_time(end) / 1e3
                prev = self._prev_end_event
                if prev is not None:
                    step.gpu_gap_s = max(prev.elapsed_time(begin) / 1e3, 0.0)
                self._prev_end_event = end
        return done

    def reset(self) -> None:
        self.steps, self._events, self._num_waited = [], [], 0
        self._prev_end_event = None


def _record():
    if not torch.cuda.is_available():
        return None
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event
