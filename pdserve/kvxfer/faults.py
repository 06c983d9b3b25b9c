"""Fault injection for tests: drop, truncate or delay the next matching transfers.

Every transport shares the same semantics (see TransportBase.poll):
  drop      nothing is posted; the transfer stays PENDING until its timeout, then FAILED.
  truncate  only the first `keep_fraction` of the bytes are posted; when they land: FAILED.
  delay     posting waits `delay_s`; DONE after that, or FAILED if the timeout comes first.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FaultKind(enum.Enum):
    DROP = "drop"
    TRUNCATE = "truncate"
    DELAY = "delay"


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    request_id: str | None = None  # None: the next transfer of any request
    delay_s: float = 0.0  # DELAY only
    keep_fraction: float = 0.5  # TRUNCATE only: share of the spec's bytes that still move


class FaultInjector:
    """A queue of faults; each transfer takes the first one that matches its request."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def inject(self, fault: Fault, count: int = 1) -> None:
        self._faults.extend([fault] * count)

    def take(self, request_id: str) -> Fault | None:
        for i, fault in enumerate(self._faults):
            if fault.request_id is None or fault.request_id == request_id:
                return self._faults.pop(i)
        return None

    def clear(self) -> None:
        self._faults.clear()

    def __len__(self) -> int:
        return len(self._faults)
