"""The controller's prefix index equals the union of the workers' actual prefix caches, after
scripted requests with evictions, and again after KV event messages were dropped on purpose."""

from __future__ import annotations

import asyncio

from pdserve.cluster.controller import ControllerConfig
from pdserve.engine import protocol as P
from tests.cluster.harness import fleet, request, run_request

# 24 blocks of 4 tokens per worker: the script below stores far more, so blocks get evicted.
WORKER_ARGV = (
    "--num-blocks",
    "24",
    "--block-size",
    "4",
    "--step-base-ms",
    "0",
    "--step-token-us",
    "0",
)
CONFIG = ControllerConfig(routing="round_robin")


def script_prompts() -> list[list[int]]:
    shared = [list(range(1, 13)), list(range(100, 117))]
    prompts = []
    for i in range(16):
        head = shared[i % 2] if i % 3 else []
        prompts.append(head + [200 + 5 * i + j for j in range(4 + i % 7)])
    return prompts


async def worker_caches(controller) -> dict[str, list[int]]:
    """Each live worker's cached block hashes, asked once its KV events are all applied."""
    caches = {}
    for _ in range(100):
        caches.clear()
        for record in controller.registry.live():
            status = P.decode_status(await controller.call(record.instance_id, "status"))
            if record.is_replaying or status.kv_seq != record.kv_next_seq:
                break
            # from_seq -1 is before any log: the worker answers with its full hash list
            reply = await controller.call(record.instance_id, "kv_replay", {"from_seq": -1})
            caches[record.instance_id] = sorted(reply["cached_hashes"])
        else:
            return caches
        await asyncio.sleep(0.05)
    raise AssertionError("the index never caught up with the workers")


def index_view(controller) -> dict[str, list[int]]:
    return {
        r.instance_id: sorted(controller.index.hashes_of(r.instance_id))
        for r in controller.registry.live()
    }


async def run_script(controller, tag: str) -> None:
    prompts = script_prompts()
    for i, prompt in enumerate(prompts[:8]):  # one at a time, then a concurrent burst
        await run_request(controller, request(f"{tag}{i}", prompt, 3))
    await asyncio.gather(
        *(run_request(controller, request(f"{tag}b{i}", p, 3)) for i, p in enumerate(prompts[8:]))
    )


def test_index_equals_worker_caches_after_requests_and_evictions():
    async def main():
        async with fleet(2, worker_argv=WORKER_ARGV, config=CONFIG) as (controller, _):
            await run_script(controller, "r")
            caches = await worker_caches(controller)
            num_events = sum(r.kv_next_seq for r in controller.registry.live())
            return caches, index_view(controller), num_events

    caches, view, num_events = asyncio.run(main())
    assert view == caches
    assert all(caches.values())
    assert num_events > sum(len(c) for c in caches.values())  # some blocks were evicted


def test_replay_restores_the_index_after_dropped_kv_messages():
    async def main():
        async with fleet(2, worker_argv=WORKER_ARGV, config=CONFIG) as (controller, _):
            handle, dropped = controller._handle, []

            def lossy(peer, msg_type, body):
                if msg_type == P.KV and len(dropped) < 5:
                    dropped.append(body[0])  # lose it on purpose
                    return
                handle(peer, msg_type, body)

            controller._handle = lossy
            await run_script(controller, "r")
            caches = await worker_caches(controller)
            replays = controller.metrics.replays._value.get()
            return caches, index_view(controller), dropped, replays

    caches, view, dropped, replays = asyncio.run(main())
    assert len(dropped) == 5
    assert replays >= 1
    assert view == caches
