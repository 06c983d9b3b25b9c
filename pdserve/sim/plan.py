"""The planner: which fleet serves a workload at its SLO for the least money.

For every candidate (GPU type x fused or prefill:decode split x GPU count) it finds the highest
request rate whose SLO attainment still meets the target (doubling, then bisection; each probe is
one simulation), and ranks candidates by goodput per dollar: requests served within SLO per
dollar of GPU time. A fleet for a larger demand is that unit replicated behind the controller
(`replicas_for`): routing within a unit is what the simulation measured; across identical units
load spreads evenly, so capacity adds up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pdserve.bench.workload import BenchRequest
from pdserve.metrics import BenchSummary
from pdserve.sim.cluster import SimConfig
from pdserve.sim.profiles import Profile
from pdserve.sim.run import simulate

KEEP_UP = 0.85  # completed req/s over the run / offered req/s, below which the fleet falls behind


@dataclass(frozen=True, slots=True)
class Candidate:
    fleet: str  # fleet spec, e.g. "prefill:1,decode:3"
    gpu: str
    num_gpus: int
    cost_per_hour: float  # the whole unit, $


@dataclass(frozen=True, slots=True)
class PlanPoint:
    candidate: Candidate
    rate: float  # highest req/s meeting the attainment target (0: none found)
    summary: BenchSummary | None  # the simulation at that rate

    @property
    def goodput(self) -> float:
        return self.summary.goodput if self.summary and self.summary.goodput else 0.0

    @property
    def requests_per_dollar(self) -> float:
        return self.goodput * 3600 / self.candidate.cost_per_hour

    @property
    def cost_per_million_tokens(self) -> float | None:
        return self.summary.cost_per_million_output_tokens if self.summary else None


def candidates(
    gpu_costs: Mapping[str, float], gpu_counts: Sequence[int], disaggregated: bool = True
) -> list[Candidate]:
    out = []
    for gpu, cost in gpu_costs.items():
        for n in gpu_counts:
            out.append(Candidate(f"fused:{n}", gpu, n, cost * n))
            for p in range(1, n if disaggregated else 1):
                out.append(Candidate(f"prefill:{p},decode:{n - p}", gpu, n, cost * n))
    return out


def max_goodput(
    requests: Sequence[BenchRequest],
    cand: Candidate,
    profile: Profile,
    slos_s: Mapping[str, float],
    attainment: float,
    routing: str = "ttft",
    num_bisections: int = 5,
    seed: int = 0,
) -> PlanPoint:
    """Highest Poisson rate (req/s) at which SLO attainment >= `attainment`."""
    profiles, costs = {"": profile}, {"": cand.cost_per_hour / cand.num_gpus}
    config = SimConfig(routing=routing)

    def probe(rate: float) -> BenchSummary:
        run = simulate(requests, cand.fleet, profiles, costs, config, rate, slos_s, seed)
        return run.summary

    def ok(s: BenchSummary, rate: float) -> bool:
        # A short run absorbs any burst: the fleet must also keep up with the offered rate.
        return (s.slo_attainment or 0.0) >= attainment and s.request_throughput >= KEEP_UP * rate

    lo, lo_summary, hi = 0.0, None, 0.5 * cand.num_gpus
    while True:  # double until the SLO breaks
        summary = probe(hi)
        if not ok(summary, hi):
            break
        lo, lo_summary, hi = hi, summary, hi * 2
        if hi > 1e6:
            break
    for _ in range(num_bisections):
        mid = (lo + hi) / 2
        summary = probe(mid)
        if ok(summary, mid):
            lo, lo_summary = mid, summary
        else:
            hi = mid
    return PlanPoint(cand, lo, lo_summary)


def search(
    requests,
    cands: Sequence[Candidate],
    profiles: Mapping[str, Profile],
    slos_s,
    attainment: float,
    routing: str = "ttft",
    num_bisections: int = 5,
    progress=None,
) -> list[PlanPoint]:
    """Every candidate's PlanPoint, best goodput per dollar first."""
    points = []
    for cand in cands:
        point = max_goodput(requests, cand, profiles[cand.gpu], slos_s, attainment, routing,
                            num_bisections)  # fmt: skip
        points.append(point)
        if progress is not None:
            progress(point)
    return sorted(points, key=lambda p: (-p.requests_per_dollar, p.candidate.num_gpus))


def replicas_for(point: PlanPoint, target_rate: float) -> int:
    """Units of this fleet needed for `target_rate` req/s within SLO."""
    return math.ceil(target_rate / point.rate) if point.rate > 0 else 0


def frontier(points: Sequence[PlanPoint]) -> list[PlanPoint]:
    """Pareto front of (unit cost per hour: lower, goodput: higher)."""
    front, best = [], -1.0
    for p in sorted(points, key=lambda p: (p.candidate.cost_per_hour, -p.goodput)):
        if p.goodput > best:
            front.append(p)
            best = p.goodput
    return front
