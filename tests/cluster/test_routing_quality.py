"""Routing quality on a shared-prefix workload (12 system prompts x 40 questions, 4 instances):
the real controller and policies over 4 fake worker processes (the real worker loop, Scheduler
and prefix cache; steps sleep a modelled time instead of running a model).

Each instance's cache holds about 5 of the 12 system prompts, so only a router that keeps a
prompt on the same instances keeps hitting. The oracle knows every cache: each system prompt
misses once in the whole fleet, every other request finds its system prompt cached.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from pdserve.cluster.controller import ControllerConfig
from pdserve.cluster.cost_model import StepCostModel
from pdserve.cluster.policies import PolicyConfig
from tests.cluster.harness import fleet, request, run_request

NUM_SYSTEM, NUM_QUESTIONS, NUM_INSTANCES = 12, 40, 4
BLOCK_SIZE, SYSTEM_LEN = 16, 256  # 16 full blocks per system prompt
REQUESTS_PER_S = 160
STEP_BASE_S, STEP_TOKEN_S = 1e-3, 20e-6
WORKER_ARGV = (
    "--num-blocks",
    "96",
    "--block-size",
    str(BLOCK_SIZE),
    "--step-base-ms",
    str(STEP_BASE_S * 1e3),
    "--step-token-us",
    str(STEP_TOKEN_S * 1e6),
)
# The fleet's step-time profile, as `pdserve profile` would measure it: the ttft policy's prior
# until its online fit of each instance takes over.
PRIOR = StepCostModel(STEP_BASE_S, STEP_TOKEN_S, 0.0, 0.0, 0.0)


def workload() -> list[list[int]]:
    rng = random.Random(0)
    systems = [[1000 + 97 * s + t for t in range(SYSTEM_LEN)] for s in range(NUM_SYSTEM)]
    prompts = [
        systems[s] + [rng.randrange(10, 999) for _ in range(rng.randrange(8, 40))]
        for s in range(NUM_SYSTEM)
        for _ in range(NUM_QUESTIONS)
    ]
    rng.shuffle(prompts)
    return prompts


async def run_policy(routing: str) -> tuple[int, list[int]]:
    """(prefix-hit tokens measured by the instances, requests routed per instance)."""
    config = ControllerConfig(routing=routing, policy=PolicyConfig(prior=PRIOR))
    async with fleet(NUM_INSTANCES, worker_argv=WORKER_ARGV, config=config) as (controller, _):
        tasks = []
        for i, prompt in enumerate(workload()):
            tasks.append(asyncio.create_task(run_request(controller, request(f"q{i}", prompt, 4))))
            await asyncio.sleep(1 / REQUESTS_PER_S)
        results = await asyncio.gather(*tasks)
        loads = [r.num_routed for r in controller.registry.live()]
    return sum(events[0].num_cached_tokens for events in results), loads


@pytest.fixture(scope="module")
def measured() -> dict[str, tuple[int, list[int]]]:
    async def main():
        return {name: await run_policy(name) for name in ("round_robin", "prefix", "ttft")}

    return asyncio.run(main())


ORACLE_HIT_TOKENS = (NUM_SYSTEM * NUM_QUESTIONS - NUM_SYSTEM) * SYSTEM_LEN


@pytest.mark.parametrize("routing", ["prefix", "ttft"])
def test_cache_aware_routing_hits_at_least_90_percent_of_the_oracle(measured, routing):
    hits, _ = measured[routing]
    round_robin_hits, _ = measured["round_robin"]
    print(
        f"{routing}: {hits / ORACLE_HIT_TOKENS:.1%} of oracle; "
        f"round_robin {round_robin_hits / ORACLE_HIT_TOKENS:.1%}"
    )
    assert hits >= 0.9 * ORACLE_HIT_TOKENS
    assert hits > round_robin_hits


@pytest.mark.parametrize("routing", ["prefix", "ttft"])
def test_busiest_instance_gets_at_most_1_3x_the_mean_load(measured, routing):
    _, loads = measured[routing]
    assert sum(loads) == NUM_SYSTEM * NUM_QUESTIONS
    assert max(loads) <= 1.3 * sum(loads) / len(loads), loads
