"""Failure handling: killed and frozen workers, restarts, the control token."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from pdserve.cluster.controller import ControllerConfig
from pdserve.engine.client import EngineDeadError
from pdserve.engine.protocol import REGISTER, WorkerInfo, encode_info, pack
from pdserve.types import FinishReason
from tests.cluster.harness import fleet, request, run_request

SLOW_STEPS = ("--step-base-ms", "5", "--step-token-us", "0")  # 60 tokens: about 0.3 s
NUM_STREAMS, MAX_TOKENS, HANG_TIMEOUT_S = 30, 60, 15


async def outcome(controller, i: int) -> str:
    """'done', 'error event' or 'dead' (EngineDeadError before any event)."""
    try:
        events = await run_request(controller, request(f"s{i}", [1 + i, 2, 3, 4, 5], MAX_TOKENS))
    except EngineDeadError:
        return "dead"
    last = events[-1]
    if last.finish_reason is FinishReason.ERROR:
        assert "failed mid-stream" in last.error
        return "error event"
    assert sum(len(e.new_token_ids) for e in events) == MAX_TOKENS
    return "done"


def test_kill_9_one_of_three_workers_while_30_requests_stream():
    async def main():
        async with fleet(3, worker_argv=SLOW_STEPS) as (controller, workers):
            tasks = [asyncio.create_task(outcome(controller, i)) for i in range(NUM_STREAMS)]
            while not any(f.has_started and f.instance_id == "worker-1"
                          for f in controller._flights.values()):  # fmt: skip
                await asyncio.sleep(0.01)
            workers.kill("worker-1")  # while it streams
            results = await asyncio.wait_for(asyncio.gather(*tasks), HANG_TIMEOUT_S)
            after = await outcome(controller, 999)
            return results, after, [r.instance_id for r in controller.registry.live()]

    results, after, live = asyncio.run(main())
    assert len(results) == NUM_STREAMS
    assert set(results) <= {"done", "error event"}  # unstarted ones were retried elsewhere
    assert "error event" in results  # worker-1 was streaming some of them
    assert after == "done"
    assert sorted(live) == ["worker-0", "worker-2"]


def test_frozen_worker_is_out_of_rotation_within_2_s_and_its_index_entries_dropped():
    async def main():
        config = ControllerConfig(routing="round_robin")
        async with fleet(2, worker_argv=("--step-base-ms", "0"), config=config) as (
            controller,
            workers,
        ):
            for i in range(4):
                await run_request(controller, request(f"r{i}", list(range(1, 40)), 2))
            await asyncio.sleep(0.3)
            assert controller.index.num_blocks("worker-1") > 0
            pid = workers.procs["worker-1"].pid
            os.kill(pid, signal.SIGSTOP)  # alive but silent
            start = time.monotonic()
            while "worker-1" in controller.registry:
                await asyncio.sleep(0.02)
            out_after_s = time.monotonic() - start
            num_blocks = controller.index.num_blocks("worker-1")
            os.kill(pid, signal.SIGKILL)
            return out_after_s, num_blocks

    out_after_s, num_blocks = asyncio.run(main())
    assert out_after_s <= 2.0
    assert num_blocks == 0


def test_restarted_worker_rejoins_under_a_new_incarnation():
    async def main():
        async with fleet(2, restart=True) as (controller, workers):
            before = controller.registry.get("worker-0").incarnation
            workers.kill("worker-0")
            while (r := controller.registry.get("worker-0")) is None or r.incarnation == before:
                await asyncio.sleep(0.05)
            await controller.wait_for_instances(2, 30)
            events = await run_request(controller, request("after", [1, 2, 3], 2))
            return before, controller.registry.get("worker-0").incarnation, events[-1]

    before, after, last = asyncio.run(asyncio.wait_for(main(), 60))
    assert after != before
    assert last.finish_reason is FinishReason.LENGTH


def test_registration_without_the_control_token_is_refused():
    async def main():
        config = ControllerConfig(control_token="s3cret")
        async with fleet(1, config=config) as (controller, _):
            import zmq
            import zmq.asyncio

            sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, b"intruder/1")
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(controller.address)
            info = WorkerInfo("intruder", "1", 0, "fake", 64, 16, 8, (), 100)
            await sock.send(pack(REGISTER, encode_info(info), "wrong"))
            await sock.send(pack(REGISTER, encode_info(info)))
            await asyncio.sleep(0.3)
            sock.close()
            return [r.instance_id for r in controller.registry.live()], controller.registry

    live, registry = asyncio.run(main())
    assert live == ["worker-0"]  # the fleet's own worker had the token (environment)
    assert registry.num_refused == 2


@pytest.mark.parametrize("max_retries", [0])
def test_without_retries_a_request_whose_instance_dies_unstarted_fails_clearly(max_retries):
    async def main():
        config = ControllerConfig(routing="round_robin", max_retries=max_retries)
        argv = ("--step-base-ms", "500")
        async with fleet(2, worker_argv=argv, config=config) as (controller, workers):
            task = asyncio.create_task(run_request(controller, request("x", [1, 2, 3], 2)))
            while "x" not in controller._flights:
                await asyncio.sleep(0.01)
            workers.kill(controller._flights["x"].instance_id)  # long before its first token
            with pytest.raises(EngineDeadError, match="failed before the first token"):
                await asyncio.wait_for(task, HANG_TIMEOUT_S)

    asyncio.run(main())
