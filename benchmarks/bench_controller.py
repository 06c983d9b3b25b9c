"""Controller overhead with fake instant workers: routing decision time p50/p99 and routed
requests/s, the controller pinned to one core.

    python benchmarks/bench_controller.py [--instances 4] [--requests 4000] [--routing ttft]

Workers are `pdserve.deploy.fake_worker` processes (the real worker loop and Scheduler, steps
take no time), pinned to another core when there is one. Each request is a shared-prefix prompt
(16 system prompts of 512 tokens + a question) with max_tokens=1, so every request costs the
controller one route (snapshots, prompt hashing, prefix-index lookup, policy), one SUBMIT, one
TOKENS message and the KV events of its blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time

from pdserve.cluster.controller import Controller, ControllerConfig
from pdserve.cluster.prom import ControllerMetrics
from pdserve.deploy.local import FAKE_WORKER_MODULE, LocalFleet, LocalFleetConfig
from pdserve.types import Request, SamplingParams


class RecordingMetrics(ControllerMetrics):
    def __init__(self):
        super().__init__()
        self.route_times_s: list[float] = []

    def observe_route(self, instance_id, seconds, est_ttft_s, num_matched_tokens) -> None:
        self.route_times_s.append(seconds)
        super().observe_route(instance_id, seconds, est_ttft_s, num_matched_tokens)


def prompts(num: int, seed: int = 0) -> list[tuple[int, ...]]:
    rng = random.Random(seed)
    systems = [[1000 + 31 * s + t for t in range(512)] for s in range(16)]
    return [
        tuple(rng.choice(systems) + [rng.randrange(10, 999) for _ in range(32)]) for _ in range(num)
    ]


async def run(args) -> dict:
    metrics = RecordingMetrics()
    controller = Controller(ControllerConfig(routing=args.routing), metrics)
    argv = ("--step-base-ms", "0", "--step-token-us", "0", "--num-blocks", "4096")
    env = {"OMP_NUM_THREADS": "1"}
    fleet_config = LocalFleetConfig(args.instances, argv, FAKE_WORKER_MODULE, env=env)
    fleet = LocalFleet(fleet_config, controller.address, on_exit=controller.mark_dead)
    controller.start()
    fleet.start()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:
        for proc in fleet.procs.values():
            os.sched_setaffinity(proc.pid, set(cores[1:]))
    os.sched_setaffinity(0, {cores[0]})
    await controller.wait_for_instances(args.instances, 60)
    sampling = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    work = prompts(args.requests + args.warmup)
    next_i = 0

    async def client() -> None:
        nonlocal next_i
        while next_i < len(work):
            i, next_i = next_i, next_i + 1
            async for _ in controller.generate(Request(f"r{i}", work[i], sampling)):
                pass

    await asyncio.gather(*(client() for _ in range(args.concurrency)))  # warm-up: fills caches
    work, next_i = prompts(args.requests, seed=1), 0
    metrics.route_times_s.clear()
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - start
    await controller.close()
    await fleet.close()
    times = sorted(metrics.route_times_s)
    return {
        "routing": args.routing,
        "instances": args.instances,
        "requests": args.requests,
        "route_p50_ms": 1e3 * statistics.median(times),
        "route_p99_ms": 1e3 * times[int(0.99 * (len(times) - 1))],
        "routed_req_per_s": args.requests / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--routing", default="ttft")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(
        "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    )


if __name__ == "__main__":
    main()
