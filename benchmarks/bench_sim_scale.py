"""Simulator scale: N requests over M fused instances (H100, Qwen3-0.6B roofline profile),
timed on one core, plus the scheduler's host time per step at engine batch sizes.

The real scheduler runs every step, so the cost is per step and per scheduled sequence-step.
The default workload is short chat turns: prompts of 32-224 tokens and VERY SHORT outputs
(1-7 tokens, mean 4), at 150 req/s per instance; that is what fits 1M requests in about a minute.
A realistic chat answer is ~200 tokens: `--output-len 64` (1-127 tokens) shows how the cost grows
with sequence-steps (report both).

    python benchmarks/bench_sim_scale.py --num-requests 1000000 --num-instances 64
    python benchmarks/bench_sim_scale.py --num-requests 100000 --output-len 64
    python benchmarks/bench_sim_scale.py --sched-only   # host time per step, 256 decode seqs
    python benchmarks/bench_sim_scale.py --build compiled   # the mypyc build of the hot modules

`--build compiled` runs the same source with the scheduler, block hashing, the messages, the
routing policies and the simulator's loop compiled by mypyc (benchmarks/build_sim_fast.py:
built into build/simfast/ when missing or stale, then this script runs again with it first on
PYTHONPATH). The output names the build that ran (`pure` or `mypyc`, read from where
`pdserve.sched.scheduler` was loaded).

Timings on a shared box are noisy: the script reports wall and CPU (process) time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

from pdserve.bench.arrivals import arrival_offsets
from pdserve.bench.workload import BenchRequest
from pdserve.sim.cluster import SimCluster, SimConfig
from pdserve.sim.fleet import build_instances, parse_fleet
from pdserve.sim.profiles import profile_for


def build_kind() -> str:
    """`mypyc` when the scheduler runs compiled (the build of build_sim_fast.py), else `pure`."""
    import pdserve.sched.scheduler as module

    return "mypyc" if module.__file__.endswith((".so", ".pyd")) else "pure"


def run_compiled_build() -> None:
    """Make sure this process runs the mypyc build: build it if needed and run this script
    again with it first on PYTHONPATH (the command line unchanged)."""
    if build_kind() == "mypyc":
        return
    if os.environ.get("PDSERVE_SIMFAST_REEXEC"):
        sys.exit("the mypyc build did not load: is build/simfast/ shadowed on sys.path?")
    import build_sim_fast

    dest = build_sim_fast.build(quiet=False)
    path = os.pathsep.join(p for p in (str(dest), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, PDSERVE_SIMFAST_REEXEC="1")
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


def scale_workload(num_requests: int, rate: float, output_len: int, seed: int = 0):
    """Distinct prompts, cheap to build: request k's tokens are a run starting at a random id.
    Prompts are slices of one tuple of ids, so they share its int objects: 1M prompts of ~128
    ids would otherwise hold ~128M ints (~4.5 GB), and the run would page that in."""
    rng = random.Random(seed)
    offsets = arrival_offsets(num_requests, rate, seed=seed)
    ids = tuple(range(30000 + 225))
    out = []
    for k, t in enumerate(offsets):
        start, n = rng.randrange(10, 30000), rng.randrange(32, 225)
        prompt = ids[start : start + n]
        out.append(BenchRequest(f"r{k}", prompt, rng.randint(1, 2 * output_len - 1), t))
    return out


def run(num_requests: int, num_instances: int, routing: str, output_len: int, rate: float):
    """(wall seconds of the simulation, SimResult, completed requests, output tokens)."""
    elapsed, _, result, ok, tokens = run_timed(num_requests, num_instances, routing, output_len,
                                               rate)  # fmt: skip
    return elapsed, result, ok, tokens


def run_timed(num_requests: int, num_instances: int, routing: str, output_len: int, rate: float):
    """As `run`, with the CPU seconds of the simulation second."""
    profile = profile_for("h100", "qwen3-0.6b")
    requests = scale_workload(num_requests, rate, output_len)
    instances = build_instances(parse_fleet(f"fused:{num_instances}"), lambda g: profile)
    config = SimConfig(routing=routing)
    sim = SimCluster(instances, config, profile.kv_bytes_per_token)
    t, cpu = time.perf_counter(), time.process_time()
    result = sim.run(requests)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    num_seq_steps = sum(i.scheduler.stats.generation_tokens for i in instances)
    ok = sum(tl.is_success for tl in result.timelines)
    return elapsed, cpu, result, ok, num_seq_steps


def scheduler_step_cost(num_seqs: int = 256, prompt_len: int = 1000, num_steps: int = 200):
    """Host time of `Scheduler.schedule` and `update` per step with `num_seqs` requests all
    decoding (the engine's steady state), in microseconds: (schedule, update), each the minimum
    over the steps (the box is shared: longer figures are other processes' time slices)."""
    from pdserve.config import SchedulerConfig
    from pdserve.sched.plan import StepResult
    from pdserve.sched.scheduler import Scheduler
    from pdserve.types import Request, SamplingParams

    config = SchedulerConfig(max_num_batched_tokens=8192, max_num_seqs=num_seqs)
    sched = Scheduler(config, num_blocks=num_seqs * (prompt_len + num_steps + 64) // 16,
                      block_size=16)  # fmt: skip
    params = SamplingParams(max_tokens=num_steps + 64, ignore_eos=True)
    for i in range(num_seqs):
        sched.add_request(Request(f"r{i}", tuple(range(i, i + prompt_len)), params))

    def step(now: float) -> tuple[float, float]:
        t0 = time.perf_counter()
        plan = sched.schedule(now)
        t1 = time.perf_counter()
        result = StepResult({s.request_id: 11 for s in plan.seqs if s.samples})
        t2 = time.perf_counter()
        sched.update(plan, result, now)
        return t1 - t0, time.perf_counter() - t2

    while any(r.num_output_tokens == 0 for r in sched.running) or len(sched.waiting):
        step(0.0)  # prefill everything
    times = [step(0.0) for _ in range(num_steps)]
    return 1e6 * min(t for t, _ in times), 1e6 * min(u for _, u in times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num-requests", type=int, default=1_000_000)
    p.add_argument("--num-instances", type=int, default=64)
    p.add_argument("--routing", default="power_of_two")
    p.add_argument("--output-len", type=int, default=4, help="mean output tokens")
    p.add_argument("--rate-per-instance", type=float, default=150.0, help="req/s")
    p.add_argument("--sched-only", action="store_true", help="only the scheduler's step cost")
    p.add_argument("--json", default=None, help="append the result as a JSON line here")
    p.add_argument(
        "--build",
        choices=("current", "compiled"),
        default="current",
        help="compiled: run the mypyc build (built first when missing or stale); "
        "current: whatever `pdserve` imports (pure unless PYTHONPATH says otherwise)",
    )
    args = p.parse_args()
    if args.build == "compiled":
        run_compiled_build()
    record: dict = {"machine_load": os.getloadavg()[0], "cpu_count": os.cpu_count(),
                    "build": build_kind()}  # fmt: skip
    print(f"build: {record['build']}")
    for num_seqs in (64, 256):
        sched_us, update_us = scheduler_step_cost(num_seqs)
        print(f"scheduler host time per step, {num_seqs} decode seqs (min over 200 steps): "
              f"schedule {sched_us:.0f} us, update {update_us:.0f} us")  # fmt: skip
        record[f"schedule_us_{num_seqs}"], record[f"update_us_{num_seqs}"] = sched_us, update_us
    if not args.sched_only:
        rate = args.rate_per_instance * args.num_instances
        elapsed, cpu, result, ok, tokens = run_timed(
            args.num_requests, args.num_instances, args.routing, args.output_len, rate
        )
        steps = sum(i.num_steps for i in result.instances)
        print(
            f"{args.num_requests} requests, {args.num_instances} instances, {args.routing}, "
            f"mean output {args.output_len}: {elapsed:.1f} s wall, {cpu:.1f} s CPU "
            f"({cpu / args.num_requests * 1e6:.1f} us CPU/request), {ok} completed, "
            f"{result.duration_s:.0f} s simulated, {steps} steps, {tokens} output tokens, "
            f"{result.num_events} events"
        )
        record.update(num_requests=args.num_requests, num_instances=args.num_instances,
                      routing=args.routing, output_len=args.output_len, wall_s=elapsed,
                      cpu_s=cpu, completed=ok, steps=steps, output_tokens=tokens,
                      simulated_s=result.duration_s)  # fmt: skip
    print(f"load average {record['machine_load']:.1f} on {record['cpu_count']} cores")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
