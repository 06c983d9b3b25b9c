"""Optional per-step timing of the runner: where a step's wall time goes (profiling only).

    |-- prepare (CPU) --|-- launch (CPU enqueues kernels) --|-- wait for the sampled ids --|
                        ^ GPU span starts (event)                    GPU span ends (event) ^

The GPU span is read from CUDA events after the step's own sync, so timing adds no sync.
Disabled (the default) it costs one attribute check per mark.
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
    wait_s: float
    gpu_span_s: float  # first to last GPU work of the step, idle gaps included


@dataclass(slots=True)
class StepTimer:
    enabled: bool = False
    steps: list[StepTiming] = field(default_factory=list)
    _marks: list[float] = field(default_factory=list)
    _kind: str = ""
    _num_seqs: int = 0
    _events: tuple = ()

    def start(self, num_seqs: int) -> None:
        if self.enabled:
            self._marks = [time.perf_counter()]
            self._num_seqs = num_seqs

    def prepared(self, graph_size: int | None) -> None:
        if self.enabled:
            self._marks.append(time.perf_counter())
            self._kind = "graph" if graph_size else "eager"
            if torch.cuda.is_available():
                self._events = tuple(torch.cuda.Event(enable_timing=True) for _ in range(2))
                self._events[0].record()

    def launched(self) -> None:
        if self.enabled:
            self._marks.append(time.perf_counter())

    def synced(self) -> None:
        if not self.enabled or len(self._marks) != 3:
            return
        gpu_s = 0.0
        if self._events:
            self._events[1].record()
            self._events[1].synchronize()
            gpu_s = self._events[0].elapsed_time(self._events[1]) / 1e3
        t0, t1, t2 = self._marks
        t3 = time.perf_counter()
        self.steps.append(StepTiming(self._kind, self._num_seqs, t1 - t0, t2 - t1, t3 - t2, gpu_s))
        self._marks = []
