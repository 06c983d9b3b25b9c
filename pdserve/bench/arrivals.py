"""Arrival processes: all at once, Poisson at a rate, or gamma with burstiness.

`vllm bench serve` convention: inter-arrival gaps are Gamma(shape=burstiness,
scale=1 / (rate * burstiness)), so the mean rate is `rate` for any burstiness; burstiness 1 is
Poisson (exponential gaps), below 1 burstier, above 1 more regular.
rate = inf sends everything at 0.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace

from pdserve.bench.workload import BenchRequest


def arrival_offsets(
    num_requests: int, request_rate: float, burstiness: float = 1.0, seed: int = 0
) -> list[float]:
    """Send offsets in seconds, non-decreasing, the first at 0 (all 0 when rate is inf)."""
    if request_rate <= 0:
        raise ValueError(f"request_rate must be > 0 (inf for all at once), got {request_rate}")
    if burstiness <= 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    if math.isinf(request_rate):
        return [0.0] * num_requests
    rng = random.Random(seed)
    scale = 1.0 / (request_rate * burstiness)
    t, out = 0.0, []
    for _ in range(num_requests):
        out.append(t)
        t += rng.gammavariate(burstiness, scale)
    return out


def with_arrivals(
    requests: Sequence[BenchRequest], request_rate: float, burstiness: float = 1.0, seed: int = 0
) -> list[BenchRequest]:
    """The same requests with arrival offsets drawn from the process, in order."""
    offsets = arrival_offsets(len(requests), request_rate, burstiness, seed)
    return [replace(r, arrival_s=t) for r, t in zip(requests, offsets)]
