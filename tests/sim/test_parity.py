"""Parity: the real CPU engine and the simulator, given the same step durations, make the same
StepPlans in the same order and give every request the same token times."""

from __future__ import annotations

import pytest

from pdserve.bench.arrivals import with_arrivals
from pdserve.bench.workload import random_workload, shared_prefix_workload
from pdserve.cluster.policies import PolicyConfig, make_policy
from pdserve.metrics import summarize
from pdserve.sched.scheduler import Scheduler
from pdserve.sim.cluster import SimCluster, SimConfig
from pdserve.sim.instance import CostExecutor, SimInstance
from tests.sim.harness import run_real

pytest.importorskip("torch")

BUDGET = 48
ENGINE_ARGS = dict(dtype="float32", block_size=4, num_blocks=96, max_num_batched_tokens=BUDGET,
                   max_num_seqs=6)  # fmt: skip


def step_time(plan) -> float:
    """Forced step duration (seconds): depends on the plan, identical on both sides."""
    return 0.004 + 0.0002 * plan.num_batched_tokens + 0.0005 * len(plan.seqs)


def real_cores(n: int):
    from pdserve.engine.llm import LLM

    cores = {}
    for k in range(n):
        llm = LLM("dummy:tiny-llama", **ENGINE_ARGS)
        llm.core.instance_id = f"fused-{k}"
        cores[llm.core.instance_id] = llm.core
    return cores


def sim_instances(cores):
    instances = []
    for k, core in enumerate(cores.values()):
        s = core.scheduler
        make = lambda s=s: Scheduler(s.config, s.kv.num_blocks, s.block_size)
        instances.append(SimInstance(k, core.instance_id, make, CostExecutor(step_time=step_time)))
    return instances


def run_both(num_instances: int, requests, routing: str):
    cores = real_cores(num_instances)
    config = PolicyConfig(max_batched_tokens=BUDGET)
    real_plans, real_tl = run_real(cores, requests, make_policy(routing, config), step_time)
    sim = SimCluster(sim_instances(cores), SimConfig(routing=routing, policy=config,
                                                     record_plans=True))  # fmt: skip
    result = sim.run(requests)
    return real_plans, real_tl, result


def assert_same(real_plans, real_tl, result):
    assert result.plans == real_plans
    for real, simulated in zip(real_tl, result.timelines):
        assert simulated.token_times_s == real.token_times_s
        assert (simulated.end_s, simulated.num_output_tokens) == (
            real.end_s,
            real.num_output_tokens,
        )
    real_sum = summarize(real_tl, result.duration_s, {"ttft": 0.1, "tpot": 0.02})
    assert summarize(result.timelines, result.duration_s, {"ttft": 0.1, "tpot": 0.02}) == real_sum


def test_one_instance_same_plans_and_token_times():
    requests = with_arrivals(random_workload(24, 40, 12, 0.7, vocab_size=500, seed=3), 30.0, seed=1)
    real_plans, real_tl, result = run_both(1, requests, "round_robin")
    assert sum(len(p) for p in real_plans.values()) > 50
    assert any(len(plan) > 1 for _, plan in real_plans["fused-0"])  # batching happened
    assert_same(real_plans, real_tl, result)


def test_one_instance_with_preemption_same_plans():
    # 96 blocks of 4 tokens can't hold 6 requests of ~100 tokens: the scheduler preempts.
    requests = random_workload(10, 70, 40, 0.3, vocab_size=500, seed=5)
    real_plans, real_tl, result = run_both(1, requests, "round_robin")
    assert_same(real_plans, real_tl, result)
    assert result.instances[0].scheduler.stats.num_preemptions > 0


@pytest.mark.parametrize("routing", ["ttft", "prefix", "least_load"])
def test_two_instances_with_real_policy_same_plans(routing):
    requests = shared_prefix_workload(3, 6, 24, 10, 8, vocab_size=500, seed=2)
    requests = with_arrivals(requests, 40.0, seed=4)
    real_plans, real_tl, result = run_both(2, requests, routing)
    assert all(real_plans[i] for i in real_plans)  # both instances got work
    assert_same(real_plans, real_tl, result)
