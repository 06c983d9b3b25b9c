"""One simulation from plain arguments: workload + fleet + profiles -> SimResult and summary.
Shared by `pdserve sim` and the planner."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from pdserve.bench.arrivals import with_arrivals
from pdserve.bench.workload import BenchRequest
from pdserve.metrics import BenchSummary, summarize
from pdserve.sim.cluster import SimCluster, SimConfig, SimResult
from pdserve.sim.fleet import build_instances, parse_fleet
from pdserve.sim.profiles import Profile


@dataclass(frozen=True, slots=True)
class SimRun:
    result: SimResult
    summary: BenchSummary
    num_gpus: int
    cost_per_hour: float  # the whole fleet, $


def simulate(
    requests: Sequence[BenchRequest],
    fleet: str,
    profiles: Mapping[str, Profile],  # gpu name ('' = default) -> profile
    costs_per_hour: Mapping[str, float],  # gpu name -> $ per GPU-hour
    config: SimConfig | None = None,
    request_rate: float | None = None,  # re-draw arrivals at this rate (Poisson) when given
    slos_s: Mapping[str, float] | None = None,
    seed: int = 0,
) -> SimRun:
    config = config or SimConfig()
    groups = parse_fleet(fleet)
    default = profiles[""]
    profile_of = lambda gpu: profiles.get(gpu, default)
    instances = build_instances(groups, profile_of)
    # The controller's ttft policy starts from the (first) profile's step-time model.
    budget = default.max_num_batched_tokens
    policy = replace(config.policy, prior=config.policy.prior or default.cost,
                     max_batched_tokens=budget)  # fmt: skip
    if request_rate is not None:
        requests = with_arrivals(requests, request_rate, seed=seed)
    sim = SimCluster(instances, replace(config, policy=policy), default.kv_bytes_per_token)
    result = sim.run(requests)
    cost = sum(costs_per_hour.get(g.gpu or "", costs_per_hour.get("", 0.0)) * g.count
               for g in groups)  # fmt: skip
    num_gpus = sum(g.count for g in groups)
    summary = summarize(result.timelines, result.duration_s, slos_s,
                        gpu_cost_per_hour=cost / num_gpus, num_gpus=num_gpus)  # fmt: skip
    return SimRun(result, summary, num_gpus, cost)
