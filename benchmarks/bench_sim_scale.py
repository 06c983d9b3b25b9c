"""Simulator scale: N requests over M fused instances (H100, Qwen3-0.6B roofline profile),
timed on one core. The real scheduler runs every step, so the cost is per scheduled sequence-step:
the workload is short chat turns (prompts 32-224 tokens, 1-7 output tokens) to fit 1M requests
in a minute; `--output-len` raises it.

    python benchmarks/bench_sim_scale.py --num-requests 1000000 --num-instances 64
"""

from __future__ import annotations

import argparse
import random
import time

from pdserve.bench.arrivals import arrival_offsets
from pdserve.bench.workload import BenchRequest
from pdserve.sim.cluster import SimCluster, SimConfig
from pdserve.sim.fleet import build_instances, parse_fleet
from pdserve.sim.profiles import profile_for


def scale_workload(num_requests: int, rate: float, output_len: int, seed: int = 0):
    """Distinct prompts, cheap to build: request k's tokens are a run starting at a random id."""
    rng = random.Random(seed)
    offsets = arrival_offsets(num_requests, rate, seed=seed)
    out = []
    for k, t in enumerate(offsets):
        start, n = rng.randrange(10, 30000), rng.randrange(32, 225)
        prompt = tuple(range(start, start + n))
        out.append(BenchRequest(f"r{k}", prompt, rng.randint(1, 2 * output_len - 1), t))
    return out


def run(num_requests: int, num_instances: int, routing: str, output_len: int, rate: float):
    profile = profile_for("h100", "qwen3-0.6b")
    requests = scale_workload(num_requests, rate, output_len)
    instances = build_instances(parse_fleet(f"fused:{num_instances}"), lambda g: profile)
    config = SimConfig(routing=routing)
    sim = SimCluster(instances, config, profile.kv_bytes_per_token)
    t = time.perf_counter()
    result = sim.run(requests)
    elapsed = time.perf_counter() - t
    num_seq_steps = sum(i.scheduler.stats.generation_tokens for i in instances)
    ok = sum(tl.is_success for tl in result.timelines)
    return elapsed, result, ok, num_seq_steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--num-requests", type=int, default=1_000_000)
    p.add_argument("--num-instances", type=int, default=64)
    p.add_argument("--routing", default="power_of_two")
    p.add_argument("--output-len", type=int, default=4, help="mean output tokens")
    p.add_argument("--rate-per-instance", type=float, default=150.0, help="req/s")
    args = p.parse_args()
    rate = args.rate_per_instance * args.num_instances
    elapsed, result, ok, tokens = run(args.num_requests, args.num_instances, args.routing,
                                      args.output_len, rate)  # fmt: skip
    steps = sum(i.num_steps for i in result.instances)
    print(
        f"{args.num_requests} requests, {args.num_instances} instances, {args.routing}: "
        f"{elapsed:.1f} s wall ({elapsed / args.num_requests * 1e6:.1f} us/request), "
        f"{ok} completed, {result.duration_s:.0f} s simulated, {steps} steps, "
        f"{tokens} output tokens, {result.num_events} events"
    )


if __name__ == "__main__":
    main()
