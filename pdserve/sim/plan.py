"""The planner: which fleet serves a workload at its SLO for the least money.

For every candidate (GPU type x fused or prefill:decode split x GPU count) it finds the highest
Poisson request rate whose SLO attainment still meets the target (a bracket, then bisection; each
probe is one simulation), and ranks candidates by goodput per dollar. Goodput is that sustainable
rate times its attainment: requests per second served within SLO (DistServe's definition), not
requests over the probe's wall time, which a finite probe's drain (the last long answers) deflates.

A probe must offer its rate for long enough to show whether the fleet keeps up: a few hundred
requests at a high rate are one burst, which any fleet absorbs within a 1 s TTFT. So a probe at
rate R sends max(N, R x `min_probe_s`) requests (the workload repeated under new ids). Over
capacity, the queue then grows through the probe, and the later half of the requests (by
arrival) misses the TTFT SLO: that half must meet the target on its own too.

A fleet for a larger demand is that unit replicated behind the controller (`replicas_for`):
routing within a unit is what the simulation measured; across identical units load spreads
evenly, so capacity adds up (`check_replicas` simulates k units at k times the rate to show it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from pdserve.bench.workload import BenchRequest
from pdserve.metrics import BenchSummary, meets_slos
from pdserve.sim.cluster import SimConfig
from pdserve.sim.profiles import Profile
from pdserve.sim.run import simulate


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
    num_probes: int = 0

    @property
    def goodput(self) -> float:
        """Requests per second served within SLO at the sustainable rate."""
        return self.rate * (self.summary.slo_attainment or 0.0) if self.summary else 0.0

    @property
    def requests_per_dollar(self) -> float:
        return self.goodput * 3600 / self.candidate.cost_per_hour

    @property
    def output_tokens_per_s(self) -> float:
        s = self.summary
        return self.rate * s.total_output_tokens / s.completed if s and s.completed else 0.0

    @property
    def cost_per_million_tokens(self) -> float | None:
        """$ per million output tokens at the sustainable rate."""
        tok_s = self.output_tokens_per_s
        return self.candidate.cost_per_hour / (tok_s * 3600) * 1e6 if tok_s > 0 else None


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


MIN_PROBE_S = 20.0  # seconds of arrivals a probe offers at least


def repeated(requests: Sequence[BenchRequest], num: int) -> list[BenchRequest]:
    """At least `num` requests: the workload, then copies of it under new ids."""
    from dataclasses import replace

    out = list(requests)
    k = 1
    while len(out) < num:
        out += [replace(r, request_id=f"{r.request_id}#{k}") for r in requests]
        k += 1
    return out


def later_half_attainment(timelines, slos_s: Mapping[str, float]) -> float:
    """SLO attainment of the later half of the requests by send time (failures count)."""
    late = sorted(timelines, key=lambda tl: tl.send_s)[len(timelines) // 2 :]
    return sum(meets_slos(tl, slos_s) for tl in late) / len(late) if late else 0.0


def max_goodput(
    requests: Sequence[BenchRequest],
    cand: Candidate,
    profile: Profile,
    slos_s: Mapping[str, float],
    attainment: float,
    routing: str = "ttft",
    num_bisections: int = 5,
    seed: int = 0,
    guess: float | None = None,
    min_probe_s: float = MIN_PROBE_S,
) -> PlanPoint:
    """Highest Poisson rate (req/s) at which SLO attainment >= `attainment`, overall and over the
    later half. `guess` (req/s) starts the bracket near the answer; the result does not depend
    on it beyond the bisection's resolution (1 / 2**num_bisections of the bracket)."""
    profiles, costs = {"": profile}, {"": cand.cost_per_hour / cand.num_gpus}
    config = SimConfig(routing=routing)
    num_probes = 0

    def probe(rate: float) -> BenchSummary | None:
        nonlocal num_probes
        num_probes += 1
        reqs = repeated(requests, math.ceil(rate * min_probe_s))
        run = simulate(reqs, cand.fleet, profiles, costs, config, rate, slos_s, seed)
        s = run.summary
        good = (s.slo_attainment or 0.0) >= attainment and later_half_attainment(
            run.result.timelines, slos_s) >= attainment  # fmt: skip
        return s if good else None

    # Bracket [lo, hi): lo meets the target (or is 0), hi does not; factors of 2 from the guess.
    lo, lo_summary = 0.0, None
    hi = guess if guess and guess > 0 else 0.5 * cand.num_gpus
    while (summary := probe(hi)) is not None:
        lo, lo_summary, hi = hi, summary, hi * 2
        if hi > 1e5:
            break
    if lo == 0.0:  # the guess failed: halve down to a rate that passes (or give up)
        while hi > 1e-3:
            mid = hi / 2
            summary = probe(mid)
            if summary is not None:
                lo, lo_summary = mid, summary
                break
            hi = mid
    for _ in range(num_bisections if lo > 0 else 0):
        mid = (lo + hi) / 2
        summary = probe(mid)
        if summary is not None:
            lo, lo_summary = mid, summary
        else:
            hi = mid
    return PlanPoint(cand, lo, lo_summary, num_probes)


def _max_goodput_job(job: tuple) -> PlanPoint:
    return max_goodput(*job)


def search(
    requests,
    cands: Sequence[Candidate],
    profiles: Mapping[str, Profile],
    slos_s,
    attainment: float,
    routing: str = "ttft",
    num_bisections: int = 5,
    progress: Callable[[PlanPoint], None] | None = None,
    jobs: int | None = None,
    min_probe_s: float = MIN_PROBE_S,
) -> list[PlanPoint]:
    """Every candidate's PlanPoint, best goodput per dollar first.

    Each GPU type's one-GPU fused fleet is searched first; its rate per GPU, times a candidate's
    GPUs, seeds that candidate's bracket. Candidates run in `jobs` processes (default: every
    core); each search is deterministic, so the result does not depend on `jobs`."""
    jobs = jobs or os.cpu_count() or 1
    per_gpu: dict[str, float] = {}
    first = [c for c in cands if c.num_gpus == 1 and c.fleet.startswith("fused")]
    rest = [c for c in cands if c not in first]

    def run(batch: list[Candidate]) -> list[PlanPoint]:
        args = [(requests, c, profiles[c.gpu], slos_s, attainment, routing, num_bisections, 0,
                 per_gpu.get(c.gpu, 0.0) * c.num_gpus or None, min_probe_s)
                for c in batch]  # fmt: skip
        if jobs > 1 and len(batch) > 1:
            with ProcessPoolExecutor(min(jobs, len(batch))) as pool:
                points = list(pool.map(_max_goodput_job, args))
        else:
            points = [_max_goodput_job(a) for a in args]
        if progress is not None:
            for point in points:
                progress(point)
        return points

    points = run(first)
    per_gpu.update((p.candidate.gpu, p.rate) for p in points if p.rate > 0)
    points += run(rest)
    return sorted(points, key=lambda p: (-p.requests_per_dollar, p.candidate.num_gpus))


def replicas_for(point: PlanPoint, target_rate: float) -> int:
    """Units of this fleet needed for `target_rate` req/s within SLO."""
    return math.ceil(target_rate / point.rate) if point.rate > 0 else 0


def check_replicas(
    requests: Sequence[BenchRequest],
    point: PlanPoint,
    num_units: int,
    profile: Profile,
    slos_s: Mapping[str, float],
    routing: str = "ttft",
    seed: int = 0,
) -> BenchSummary:
    """Simulate `num_units` copies of the point's fleet as one fleet behind one router, at
    `num_units` times its rate (the workload repeated to keep the same duration)."""
    c = point.candidate
    groups = [g.split(":") for g in c.fleet.split(",")]
    fleet = ",".join(f"{role}:{int(n) * num_units}" for role, n in groups)
    many = [r for k in range(num_units) for r in _renamed(requests, k)]
    costs = {"": c.cost_per_hour / c.num_gpus}
    run = simulate(many, fleet, {"": profile}, costs, SimConfig(routing=routing),
                   point.rate * num_units, slos_s, seed)  # fmt: skip
    return run.summary


def _renamed(requests: Sequence[BenchRequest], k: int) -> list[BenchRequest]:
    from dataclasses import replace

    return [replace(r, request_id=f"{r.request_id}#{k}") for r in requests]


def frontier(points: Sequence[PlanPoint]) -> list[PlanPoint]:
    """Pareto front of (unit cost per hour: lower, goodput: higher)."""
    front, best = [], -1.0
    for p in sorted(points, key=lambda p: (p.candidate.cost_per_hour, -p.goodput)):
        if p.goodput > best:
            front.append(p)
            best = p.goodput
    return front
