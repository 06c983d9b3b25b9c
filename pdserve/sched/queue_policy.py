"""Waiting-queue orders and preemption victims, registered by name (`SchedulerConfig.policy`)."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from pdserve.sched.request import SchedRequest


class QueuePolicy(Protocol):
    """Orders the waiting queue and picks which running request to preempt."""

    def push(self, req: SchedRequest) -> None: ...
    def push_front(self, req: SchedRequest) -> None:
        """Re-queue a preempted request so it is admitted again before newer ones."""

    def peek(self) -> SchedRequest: ...
    def pop(self) -> SchedRequest: ...
    def remove(self, req: SchedRequest) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[SchedRequest]: ...
    def victim(self, running: list[SchedRequest]) -> SchedRequest:
        """The running request to preempt when blocks run out."""


class FcfsPolicy:
    def __init__(self) -> None:
        self._queue: deque[SchedRequest] = deque()

    def push(self, req: SchedRequest) -> None:
        self._queue.append(req)

    def push_front(self, req: SchedRequest) -> None:
        self._queue.appendleft(req)

    def peek(self) -> SchedRequest:
        return self._queue[0]

    def pop(self) -> SchedRequest:
        return self._queue.popleft()

    def remove(self, req: SchedRequest) -> None:
        self._queue.remove(req)

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[SchedRequest]:
        return iter(self._queue)

    def victim(self, running: list[SchedRequest]) -> SchedRequest:
        return running[-1]  # the latest admitted


class PriorityPolicy:
    """Lower `priority` first, then arrival order. Preempts the lowest-priority, latest request."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, SchedRequest]] = []

    def push(self, req: SchedRequest) -> None:
        heapq.heappush(self._heap, (req.priority, req.seq_no, req))

    def push_front(self, req: SchedRequest) -> None:
        self.push(req)  # its key already places it before newer requests of its priority

    def peek(self) -> SchedRequest:
        return self._heap[0][2]

    def pop(self) -> SchedRequest:
        return heapq.heappop(self._heap)[2]

    def remove(self, req: SchedRequest) -> None:
        self._heap = [e for e in self._heap if e[2] is not req]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[SchedRequest]:
        return iter([e[2] for e in sorted(self._heap, key=lambda e: e[:2])])

    def victim(self, running: list[SchedRequest]) -> SchedRequest:
        return max(running, key=lambda r: (r.priority, r.seq_no))


POLICIES: dict[str, type] = {"fcfs": FcfsPolicy, "priority": PriorityPolicy}


def make_queue_policy(name: str) -> QueuePolicy:
    if name not in POLICIES:
        raise ValueError(f"unknown scheduling policy {name!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[name]()
