"""SLO admission: 429 (Overloaded) when the fleet is saturated, never for an idle fleet."""

from __future__ import annotations

import asyncio

from pdserve.cluster.controller import ControllerConfig
from pdserve.cluster.cost_model import StepCostModel
from pdserve.cluster.policies import PolicyConfig
from pdserve.engine.client import Overloaded
from pdserve.server.responses import engine_error
from tests.cluster.harness import fleet, request, run_request

STEP_BASE_S, STEP_TOKEN_S = 0.01, 100e-6  # a 500-token prompt takes about 60 ms
WORKER_ARGV = ("--step-base-ms", "10", "--step-token-us", "100", "--max-num-batched-tokens", "512")
POLICY = PolicyConfig(
    max_batched_tokens=512, prior=StepCostModel(STEP_BASE_S, STEP_TOKEN_S, 0.0, 0.0, 0.0)
)
CONFIG = ControllerConfig(policy=POLICY, slo_ttft_s=0.1)


async def try_request(controller, rid: str, prompt_len: int) -> str:
    try:
        await run_request(controller, request(rid, [1 + (i * 7) % 900 for i in range(prompt_len)]))
    except Overloaded as e:
        assert e.retry_after_s == 1 and "TTFT SLO of 100 ms" in str(e)
        return "429"
    return "ok"


def test_an_idle_fleet_never_refuses():
    async def main():
        async with fleet(2, worker_argv=WORKER_ARGV, config=CONFIG) as (controller, _):
            return [await try_request(controller, f"r{i}", 40 + 20 * i) for i in range(12)]

    assert asyncio.run(main()) == ["ok"] * 12


def test_a_saturated_fleet_refuses_with_429_and_admits_again_when_idle():
    async def main():
        async with fleet(2, worker_argv=WORKER_ARGV, config=CONFIG) as (controller, _):
            burst = [try_request(controller, f"b{i}", 400 + i) for i in range(40)]
            results = await asyncio.gather(*burst)
            after = await try_request(controller, "after", 50)
            return results, after, controller.metrics.rejected._value.get()

    results, after, num_rejected = asyncio.run(main())
    assert results.count("429") >= 10 and results.count("ok") >= 2
    assert num_rejected == results.count("429")
    assert after == "ok"


def test_the_server_answers_429_with_retry_after():
    error = engine_error(Overloaded("full", retry_after_s=2))
    assert error.status == 429
    assert error.headers == {"Retry-After": "2"}
