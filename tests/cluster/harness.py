"""A controller over local worker processes inside one asyncio run, for cluster tests.

    async with fleet(3, fake=True) as (controller, workers): ...

Fake workers (deploy/fake_worker.py) run the real worker loop and Scheduler without a model;
real ones load a tiny random model. Every worker gets one thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from pdserve.cluster.controller import Controller, ControllerConfig
from pdserve.deploy.local import FAKE_WORKER_MODULE, WORKER_MODULE, LocalFleet, LocalFleetConfig
from pdserve.types import Request, SamplingParams, TokenEvent

TINY_MODEL = "dummy:tiny-llama"
START_TIMEOUT_S = 120
ONE_THREAD = {"OMP_NUM_THREADS": "1", "PDSERVE_WORKER_THREADS": "1"}


@contextlib.asynccontextmanager
async def fleet(
    num: int,
    fake: bool = True,
    worker_argv: Sequence[str] = (),
    config: ControllerConfig | None = None,
    restart: bool = False,
):
    config = config or ControllerConfig()
    controller = Controller(config)
    module = FAKE_WORKER_MODULE if fake else WORKER_MODULE
    argv = tuple(worker_argv) if fake else ("--model", TINY_MODEL, "--threads", "1", *worker_argv)
    env = dict(ONE_THREAD)
    if config.control_token:
        env["PDSERVE_CONTROL_TOKEN"] = config.control_token
    workers = LocalFleet(
        LocalFleetConfig(num, argv, module, restart=restart, env=env),
        controller.address,
        on_exit=controller.mark_dead,
    )
    controller.start()
    workers.start()
    try:
        await controller.wait_for_instances(num, START_TIMEOUT_S)
        yield controller, workers
    finally:
        await controller.close()
        await workers.close()


def request(rid: str, prompt: Sequence[int], max_tokens: int = 4, **sampling) -> Request:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **sampling)
    return Request(rid, tuple(prompt), params)


async def run_request(engine, req: Request) -> list[TokenEvent]:
    return [event async for event in engine.generate(req)]


def token_ids(events: Sequence[TokenEvent]) -> list[int]:
    return [t for e in events for t in e.new_token_ids]
