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
from collections.abc import Sequence
from typing import Any, ClassVar

ARRIVAL, STEP_END, START, TRANSFER, FAULT = range(5)


class Event:
    __slots__ = ()
    priority: ClassVar[int] = FAULT

    def fire(self, sim: Any, now: float) -> None:
        raise NotImplementedError


class Arrival(Event):
    __slots__ = ("req",)
    priority: ClassVar[int] = ARRIVAL

    def __init__(self, req):
        self.req = req  # a bench.workload.BenchRequest

    def fire(self, sim: Any, now: float) -> None:
        sim.on_arrival(self.req, now)


class StepStart(Event):
    __slots__ = ("instance",)
    priority: ClassVar[int] = START

    def __init__(self, instance):
        self.instance = instance

    def fire(self, sim: Any, now: float) -> None:
        sim.on_step_start(self.instance, now)


class StepEnd(Event):
    __slots__ = ("instance", "incarnation")
    priority: ClassVar[int] = STEP_END

    def __init__(self, instance, incarnation: int):
        self.instance, self.incarnation = instance, incarnation

    def fire(self, sim: Any, now: float) -> None:
        if self.instance.incarnation == self.incarnation:  # else the instance died mid-step
            sim.on_step_end(self.instance, now)


class TransferDone(Event):
    __slots__ = ("handoff",)
    priority: ClassVar[int] = TRANSFER

    def __init__(self, handoff):
        self.handoff = handoff

    def fire(self, sim: Any, now: float) -> None:
        sim.on_transfer_done(self.handoff, now)


class InstanceFailure(Event):
    __slots__ = ("instance",)

    def __init__(self, instance):
        self.instance = instance

    def fire(self, sim: Any, now: float) -> None:
        sim.on_failure(self.instance, now)


class InstanceRestart(Event):
    __slots__ = ("instance",)

    def __init__(self, instance):
        self.instance = instance

    def fire(self, sim: Any, now: float) -> None:
        sim.on_restart(self.instance, now)


class EventLoop:
    """A heap of (time_s, priority, sequence number, event); `run` fires them in order.

    Events known before the run starts (a workload's arrivals: up to millions) may instead be
    given once to `preload`, sorted by time: they stay in that list, merged with the heap as the
    loop runs, and count as pushed before anything else (at equal time and priority they fire
    first, in their list order), which is exactly where pushing them first would put them. The
    heap then holds only what the run itself schedules (about one event per instance), so its
    operations stay cheap.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Event]] = []
        self._seq = itertools.count()
        self._preloaded: Sequence[tuple[float, Event]] = []
        self._next_preloaded = 0
        self.now = 0.0
        self.num_fired = 0

    def push(self, time_s: float, event: Event) -> None:
        heapq.heappush(self._heap, (time_s, event.priority, next(self._seq), event))

    def preload(self, events: Sequence[tuple[float, Event]]) -> None:
        """Events sorted by time (ties: in list order), before any `push`."""
        if self._heap or self._preloaded:
            raise RuntimeError("preload once, before anything is pushed")
        if any(events[i][0] > events[i + 1][0] for i in range(len(events) - 1)):
            raise ValueError("preloaded events must be sorted by time")
        self._preloaded = events

    def __len__(self) -> int:
        return len(self._heap) + len(self._preloaded) - self._next_preloaded

    def run(self, sim: Any, until_s: float = float("inf")) -> None:
        heap, pop = self._heap, heapq.heappop
        pre, i, num_pre = self._preloaded, self._next_preloaded, len(self._preloaded)
        num_fired = self.num_fired
        try:
            while True:
                if i < num_pre:
                    time_s, event = pre[i]
                    if heap:
                        top = heap[0]
                        # the heap's event first only if strictly earlier in (time, priority):
                        # at a tie the preloaded one was pushed first
                        if top[0] < time_s or (top[0] == time_s and top[1] < event.priority):
                            time_s, event = top[0], top[3]
                            if time_s > until_s:
                                break
                            pop(heap)
                        elif time_s > until_s:
                            break
                        else:
                            i += 1
                    elif time_s > until_s:
                        break
                    else:
                        i += 1
                elif heap and heap[0][0] <= until_s:
                    time_s, _, _, event = pop(heap)
                else:
                    break
                self.now = time_s
                event.fire(sim, time_s)
                num_fired += 1
        finally:
            self._next_preloaded, self.num_fired = i, num_fired
