"""The discrete-event loop and its event types: one small class per kind of event.

Events at the same time fire in priority order, then in the order they were scheduled:

    ARRIVAL (0)  a request enters: routed and queued before any step that starts at this time
    STEP_END (1) an instance's step ends: tokens out, snapshot and KV events published, next step
    START (2)    an idle instance that got work starts a step (after every arrival of this time)
    TRANSFER (3) a prefill's KV has reached its decode instance
    FAULT (4)    an instance fails or comes back

This order is the contract the parity test relies on: the real engines' harness does the same.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

ARRIVAL, STEP_END, START, TRANSFER, FAULT = range(5)


class Event:
    __slots__ = ()
    priority = FAULT

    def fire(self, sim: Any, now: float) -> None:
        raise NotImplementedError


class Arrival(Event):
    __slots__ = ("req",)
    priority = ARRIVAL

    def __init__(self, req):
        self.req = req  # a bench.workload.BenchRequest

    def fire(self, sim, now):
        sim.on_arrival(self.req, now)


class StepStart(Event):
    __slots__ = ("instance",)
    priority = START

    def __init__(self, instance):
        self.instance = instance

    def fire(self, sim, now):
        sim.on_step_start(self.instance, now)


class StepEnd(Event):
    __slots__ = ("instance", "incarnation")
    priority = STEP_END

    def __init__(self, instance, incarnation: int):
        self.instance, self.incarnation = instance, incarnation

    def fire(self, sim, now):
        if self.instance.incarnation == self.incarnation:  # else the instance died mid-step
            sim.on_step_end(self.instance, now)


class TransferDone(Event):
    __slots__ = ("handoff",)
    priority = TRANSFER

    def __init__(self, handoff):
        self.handoff = handoff

    def fire(self, sim, now):
        sim.on_transfer_done(self.handoff, now)


class InstanceFailure(Event):
    __slots__ = ("instance",)

    def __init__(self, instance):
        self.instance = instance

    def fire(self, sim, now):
        sim.on_failure(self.instance, now)


class InstanceRestart(Event):
    __slots__ = ("instance",)

    def __init__(self, instance):
        self.instance = instance

    def fire(self, sim, now):
        sim.on_restart(self.instance, now)


class EventLoop:
    """A heap of (time_s, priority, sequence number, event); `run` fires them in order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Event]] = []
        self._seq = itertools.count()
        self.now = 0.0
        self.num_fired = 0

    def push(self, time_s: float, event: Event) -> None:
        heapq.heappush(self._heap, (time_s, event.priority, next(self._seq), event))

    def __len__(self) -> int:
        return len(self._heap)

    def run(self, sim: Any, until_s: float = float("inf")) -> None:
        heap, pop = self._heap, heapq.heappop
        while heap and heap[0][0] <= until_s:
            time_s, _, _, event = pop(heap)
            self.now = time_s
            event.fire(sim, time_s)
            self.num_fired += 1
