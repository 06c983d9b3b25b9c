"""Lazy runs (`SimCluster._run_lazy`: each instance advanced only as far as a routing decision
looks at it) give exactly what the event loop gives: the same token times, plans, event count,
per-instance steps and busy time, scheduler counters and final views."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pdserve.bench.arrivals import with_arrivals
from pdserve.bench.workload import random_workload, sharegpt_like_workload
from pdserve.cluster.policies import PolicyConfig
from pdserve.sim.cluster import SimCluster, SimConfig
from pdserve.sim.fleet import build_instances, parse_fleet
from pdserve.sim.profiles import profile_for

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import bench_sim_scale  # noqa: E402

PROFILE = profile_for("h100", "qwen3-0.6b")
# 120 blocks of 16 tokens for up to 8 requests of ~260 tokens: preemptions
SMALL = replace(PROFILE, num_blocks=120, max_num_batched_tokens=256, max_num_seqs=8)


def simulate(requests, fleet, profile=PROFILE, lazy=True, **config):
    instances = build_instances(parse_fleet(fleet), lambda gpu: profile)
    policy = PolicyConfig(max_batched_tokens=profile.max_num_batched_tokens, prior=profile.cost)
    sim = SimCluster(instances, SimConfig(policy=policy, record_plans=True, **config),
                     profile.kv_bytes_per_token)  # fmt: skip
    if not lazy:
        sim._can_run_lazy = lambda requests: False
    result = sim.run(requests)
    assert sim.is_lazy == lazy
    return sim, result


def outcome(sim, result):
    return (
        [
            (t.send_s, t.token_times_s, t.num_output_tokens, t.end_s, t.is_success, t.error)
            for t in result.timelines
        ],  # fmt: skip
        result.plans,
        result.num_events,
        result.duration_s,
        [(i.num_steps, i.busy_s, i.scheduler.stats, i.view) for i in result.instances],
    )


def assert_lazy_is_eager(requests, fleet, profile=PROFILE, **config):
    lazy_sim, lazy = simulate(requests, fleet, profile, lazy=True, **config)
    eager_sim, eager = simulate(requests, fleet, profile, lazy=False, **config)
    assert outcome(lazy_sim, lazy) == outcome(eager_sim, eager)
    for inst in lazy.instances:
        inst.scheduler.check_integrity()
    return lazy_sim, lazy


@pytest.mark.parametrize("routing", ["power_of_two", "round_robin", "least_load"])
def test_lazy_run_equals_the_event_loop_at_fleet_rates(routing):
    requests = bench_sim_scale.scale_workload(1500, 8 * 150.0, 4)
    _, result = assert_lazy_is_eager(requests, "fused:8", routing=routing)
    assert all(t.is_success for t in result.timelines)
    assert min(i.num_steps for i in result.instances) > 100


def test_lazy_run_equals_the_event_loop_under_preemption_and_overheads():
    requests = with_arrivals(random_workload(60, 200, 60, 0.3, vocab_size=500, seed=5), 200.0,
                             seed=1)  # fmt: skip
    _, result = assert_lazy_is_eager(requests, "fused:2", SMALL, routing="power_of_two",
                                     request_overhead_s=0.003, step_overhead_s=0.0004)  # fmt: skip
    assert sum(i.scheduler.stats.num_preemptions for i in result.instances) > 0


def test_lazy_run_equals_the_event_loop_for_a_burst_with_slo_refusals():
    requests = with_arrivals(sharegpt_like_workload(300, seed=1), float("inf"), seed=0)
    _, result = assert_lazy_is_eager(requests, "fused:2", routing="power_of_two", slo_ttft_s=0.05)
    assert all(t.is_success for t in result.timelines)  # power_of_two makes no estimate


def test_runs_that_read_the_prefix_index_or_link_instances_use_the_event_loop():
    requests = with_arrivals(sharegpt_like_workload(40, seed=0), 20.0, seed=0)
    for fleet, config in [
        ("fused:2", dict(routing="prefix")),
        ("fused:2", dict(routing="ttft")),
        ("prefill:1,decode:1", dict(routing="power_of_two")),
        ("fused:2", dict(routing="power_of_two", failures=((0.5, "fused-0", 0.5),))),
        ("fused:2", dict(routing="power_of_two", trace=True)),
    ]:
        instances = build_instances(parse_fleet(fleet), lambda gpu: PROFILE)
        sim = SimCluster(instances, SimConfig(**config), PROFILE.kv_bytes_per_token)
        sim.run(requests)
        assert not sim.is_lazy, (fleet, config)


def test_the_prefix_index_is_fed_only_for_a_policy_that_reads_it():
    requests = with_arrivals(sharegpt_like_workload(40, seed=0), 20.0, seed=0)
    sizes = {}
    for routing in ("prefix", "power_of_two"):
        instances = build_instances(parse_fleet("fused:2"), lambda gpu: PROFILE)
        sim = SimCluster(instances, SimConfig(routing=routing), PROFILE.kv_bytes_per_token)
        result = sim.run(requests)
        sizes[routing] = len(sim.index)
        assert sum(len(i.scheduler.kv.prefix_cache) for i in result.instances) > 0
    assert sizes == {"prefix": sizes["prefix"], "power_of_two": 0} and sizes["prefix"] > 0
