"""A PD fleet for these tests: one controller, `prefill-0`, `prefill-1` and `decode-0` real worker
processes (tiny random Llama, one thread each) handing KV over NIXL, all on one event loop per
module. Two prefill instances, so a killed one can be routed around."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from pdserve.cluster.controller import Controller, ControllerConfig
from pdserve.cluster.pd_router import PDConfig
from pdserve.deploy.local import WORKER_MODULE, LocalFleet, LocalFleetConfig
from pdserve.engine.llm import LLM
from pdserve.types import SamplingParams
from tests.cluster.harness import ONE_THREAD, START_TIMEOUT_S, TINY_MODEL

ENGINE_ARGV = ("--model", TINY_MODEL, "--threads", "1", "--max-model-len", "256",
               "--num-blocks", "64", "--block-size", "16")  # fmt: skip
LEASE_S = 2.0
PD_CONFIG = PDConfig(disaggregation="always")  # every request with a live prefill is handed off


@dataclass
class PDFleet:
    loop: asyncio.AbstractEventLoop
    controller: Controller
    workers: dict[str, LocalFleet]  # role -> its local fleet (kill a worker with it)

    def run(self, coro):
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def pd_fleet():
    loop = asyncio.new_event_loop()
    config = ControllerConfig(pd=PD_CONFIG)
    groups = (("prefill", 2, ("--kv-lease-s", str(LEASE_S))), ("decode", 1, ()))
    fleets = []

    async def start() -> Controller:
        controller = Controller(config)
        controller.start()
        for role, num, extra in groups:
            argv = (*ENGINE_ARGV, "--role", role, "--kv-transport", "nixl", *extra)
            cfg = LocalFleetConfig(num, argv, WORKER_MODULE, id_prefix=role, env=dict(ONE_THREAD))
            fleets.append(LocalFleet(cfg, controller.address, controller.mark_dead))
            fleets[-1].start()
        await controller.wait_for_instances(3, START_TIMEOUT_S)
        return controller

    controller = loop.run_until_complete(start())
    yield PDFleet(loop, controller, {"prefill": fleets[0], "decode": fleets[1]})

    async def stop() -> None:
        await controller.close()
        for fleet in fleets:
            await fleet.close()

    loop.run_until_complete(stop())
    loop.close()


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def reference():
    """prompt -> greedy token ids of one fused engine with the workers' settings."""
    llm = LLM(TINY_MODEL, max_model_len=256, num_blocks=64, block_size=16)

    def generate(prompts, max_tokens: int) -> list[list[int]]:
        return [out.token_ids for out in llm.generate(prompts, greedy(max_tokens))]

    return generate
