"""Digests of simulator and scheduler runs, for proving that two builds of the same source (pure
Python and the mypyc build of `benchmarks/build_sim_fast.py`) behave identically.

    python tests/sim/sim_digests.py                 # every scenario, JSON {name: digest}
    python tests/sim/sim_digests.py --scale 100000  # the scale benchmark's run only
    PYTHONPATH=build/simfast python tests/sim/sim_digests.py   # the same, compiled

A digest covers what a run produces: every request's timeline (send time, token times, output
count, end, success, error), every step plan (request, computed, new tokens), the event count
and duration, per instance its step count, busy time, scheduler counters and final view, and
the trace. The scheduler scenarios drive `Scheduler` directly through the paths the simulator
does not take (PD states and leases, priority queue, aborts, stop tokens, async scheduling,
chunked prefill off, prompt logprobs, abort of a waiting request).

Floats go in by `repr` (bit-exact), so a build that computed any time differently would show.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import bench_sim_scale  # noqa: E402

from pdserve import hashing  # noqa: E402
from pdserve.bench.arrivals import with_arrivals  # noqa: E402
from pdserve.bench.workload import (  # noqa: E402
    multi_turn_workload,
    random_workload,
    shared_prefix_workload,
    sharegpt_like_workload,
)
from pdserve.cluster.policies import PolicyConfig  # noqa: E402
from pdserve.config import SchedulerConfig  # noqa: E402
from pdserve.sched.plan import StepResult  # noqa: E402
from pdserve.sched.scheduler import Scheduler  # noqa: E402
from pdserve.sim.cluster import SimCluster, SimConfig  # noqa: E402
from pdserve.sim.fleet import build_instances, parse_fleet  # noqa: E402
from pdserve.sim.profiles import profile_for  # noqa: E402
from pdserve.types import KVRole, Logprob, Request, SamplingParams  # noqa: E402

PROFILE = profile_for("h100", "qwen3-0.6b")
SMALL = replace(PROFILE, num_blocks=120, max_num_batched_tokens=256, max_num_seqs=8)


def _digest(value) -> str:
    return hashlib.blake2b(repr(value).encode(), digest_size=16).hexdigest()


def _stats(stats) -> tuple:
    return (stats.prefix_queries, stats.prefix_hits, stats.num_preemptions, stats.prompt_tokens,
            stats.generation_tokens, sorted(stats.finished.items()))  # fmt: skip


def run_digest(result) -> str:
    timelines = [(t.send_s, t.token_times_s, t.num_output_tokens, t.end_s, t.is_success, t.error)
                 for t in result.timelines]  # fmt: skip
    instances = [(i.instance_id, i.num_steps, i.busy_s, _stats(i.scheduler.stats), i.view,
                  len(i.scheduler.kv.prefix_cache), i.scheduler.kv.num_free_blocks)
                 for i in result.instances]  # fmt: skip
    plans = sorted(result.plans.items())
    return _digest((timelines, plans, result.num_events, result.duration_s, instances,
                    result.trace))  # fmt: skip


def simulate(requests, fleet: str, profile=PROFILE, **config):
    instances = build_instances(parse_fleet(fleet), lambda gpu: profile)
    policy = PolicyConfig(max_batched_tokens=profile.max_num_batched_tokens, prior=profile.cost)
    sim = SimCluster(instances, SimConfig(policy=policy, record_plans=True, **config),
                     profile.kv_bytes_per_token)  # fmt: skip
    result = sim.run(requests)
    for inst in result.instances:
        if inst.is_alive:
            inst.scheduler.check_integrity()
    return f"{run_digest(result)} lazy={sim.is_lazy}"


def sim_scenarios() -> dict:
    scale = bench_sim_scale.scale_workload(1500, 8 * 150.0, 4)
    chat = with_arrivals(sharegpt_like_workload(120, seed=1), 40.0, seed=1)
    burst = with_arrivals(sharegpt_like_workload(150, seed=2), float("inf"), seed=0)
    small = with_arrivals(random_workload(60, 200, 60, 0.3, vocab_size=500, seed=5), 200.0,
                          seed=1)  # fmt: skip
    shared = with_arrivals(shared_prefix_workload(4, 12, 96, 24, 8, seed=3), 60.0, seed=3)
    turns = multi_turn_workload(6, 3, 40, 12, seed=4)
    return {
        "scale-p2": lambda: simulate(scale, "fused:8", routing="power_of_two"),
        "scale-rr": lambda: simulate(scale, "fused:8", routing="round_robin"),
        "scale-ll": lambda: simulate(scale, "fused:8", routing="least_load"),
        "chat-ttft": lambda: simulate(chat, "fused:3", routing="ttft"),
        "chat-prefix": lambda: simulate(chat, "fused:3", routing="prefix"),
        "chat-trace": lambda: simulate(chat, "fused:2", routing="power_of_two", trace=True),
        "pd": lambda: simulate(chat, "prefill:1,decode:2", routing="power_of_two", trace=True),
        "pd-ttft": lambda: simulate(chat, "prefill:2,decode:2", routing="ttft"),
        "failure": lambda: simulate(
            chat, "fused:2", routing="round_robin", failures=((0.5, "fused-0", 1.0),)
        ),  # fmt: skip
        "pd-failure": lambda: simulate(
            chat, "prefill:1,decode:2", routing="least_load", failures=((0.8, "decode-1", 0.7),)
        ),  # fmt: skip
        "slo-burst": lambda: simulate(burst, "fused:2", routing="ttft", slo_ttft_s=0.05),
        "preempt-lazy": lambda: simulate(
            small,
            "fused:2",
            SMALL,
            routing="power_of_two",
            request_overhead_s=0.003,
            step_overhead_s=0.0004,
        ),
        "preempt-prefix": lambda: simulate(small, "fused:2", SMALL, routing="prefix"),
        "shared-prefix": lambda: simulate(shared, "fused:2", SMALL, routing="prefix"),
        "multi-turn": lambda: simulate(turns, "fused:2", routing="prefix"),
    }


def _drive(sched: Scheduler, steps: list, script: dict, max_steps: int = 400, depth: int = 1):
    """Run `sched` with `depth` steps in flight (2: async scheduling); `script[k]` is called
    before step k. Every plan, result and event goes into `steps`."""
    in_flight = []
    for k in range(max_steps):
        if k in script:
            steps.append(("script", k, script[k](sched)))
        plan = sched.schedule(float(k))
        sampled = {s.request_id: (7 * k + len(s.request.token_ids)) % 50 + 10
                   for s in plan.seqs if s.samples}  # fmt: skip
        logprobs = {rid: Logprob(t, -0.5, 1) for rid, t in sampled.items()}
        prompt_logprobs = {s.request_id: [None] * s.num_new_tokens for s in plan.seqs
                           if s.needs_prompt_logprobs}  # fmt: skip
        in_flight.append((plan, StepResult(sampled, logprobs, prompt_logprobs, 0.01)))
        steps.append((plan.summary(), plan.num_batched_tokens, plan.preempted_ids,
                      plan.finished_ids, sched.load()))  # fmt: skip
        if len(in_flight) >= depth:
            plan, result = in_flight.pop(0)
            steps.append(sched.update(plan, result, float(k) + 0.5))
        sched.check_integrity()
        if not sched.has_unfinished and not in_flight and not sched.sending and k > max(script):
            break
    for plan, result in in_flight:
        steps.append(sched.update(plan, result, float(max_steps)))
    steps.append((_stats(sched.stats), sched.snapshot("x", 1.0)))
    return _digest(steps)


def _req(i: int, n: int, max_tokens: int, **kw) -> Request:
    params = kw.pop("sampling", None) or SamplingParams(max_tokens, ignore_eos=True)
    return Request(f"q{i}", tuple(range(100 + 3 * i, 100 + 3 * i + n)), params, **kw)


def sched_scenarios() -> dict:
    def mixed(policy: str, depth: int, chunked: bool = True):
        config = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=6, policy=policy,
                                 enable_chunked_prefill=chunked, long_prefill_token_threshold=24,
                                 kv_lease_s=3.0)  # fmt: skip
        sched = Scheduler(config, num_blocks=40, block_size=4)
        for i in range(10):
            eos = (55, 33) if i % 3 == 0 else ()
            sampling = SamplingParams(6 + i % 5, ignore_eos=i % 3 != 0, stop_token_ids=(17,)
                                      if i % 4 == 1 else (), min_tokens=1,
                                      prompt_logprobs=1 if i == 2 else None)  # fmt: skip
            sched.add_request(_req(i, 20 + 5 * i if chunked else 20 + 4 * i, 0, sampling=sampling,
                                   priority=i % 3, eos_token_ids=eos))  # fmt: skip
        script = {
            3: lambda s: s.finish("q4"),
            5: lambda s: (
                s.add_request(_req(20, 30, 4, kv_role=KVRole.SEND)),
                s.add_request(_req(21, 26, 5, kv_role=KVRole.RECEIVE)),
            ),
            9: lambda s: s.drain_kv_reservations(),
            14: lambda s: s.finish_receiving("q21", 42),
            16: lambda s: (
                s.add_request(_req(22, 18, 3, kv_role=KVRole.RECEIVE)),
                s.add_request(_req(23, 10, 0)),
            ),
            19: lambda s: s.finish_receiving("q22", None),
            22: lambda s: s.release_kv("q20"),
            25: lambda s: s.finish("q9", "stop"),
            30: lambda s: s.add_request(_req(24, 40, 3, kv_role=KVRole.SEND)),
        }
        return _drive(sched, [], script, depth=depth)

    return {
        f"sched-{policy}-depth{depth}": (lambda p=policy, d=depth: mixed(p, d))
        for policy in ("fcfs", "priority")
        for depth in (1, 2)
    } | {"sched-unchunked": lambda: mixed("fcfs", 1, chunked=False)}


def hash_scenarios() -> dict:
    """Block hashes (`pdserve.hashing`: hashlib in pure Python, `blake2b64`'s word arithmetic in
    the mypyc build) of seeded random prompts: lengths 0-300, block sizes 1-32, a start offset,
    parents and token ids up to the 64-bit limits, tuples and lists, one block at a time too."""

    def block_hashes() -> str:
        rng = random.Random(7)
        out = []
        for k in range(300):
            block_size = rng.choice((1, 2, 4, 15, 16, 17, 32))
            high = rng.choice((100, 50_000, 2**31, 2**63 - 1))
            tokens = [rng.randrange(-1 if high < 2**63 - 1 else -(2**63), high)
                      for _ in range(rng.randrange(301))]  # fmt: skip
            parent = rng.choice((hashing.NONE_HASH, rng.getrandbits(64), 2**64 - 1))
            start = block_size * rng.randrange(3) if k % 2 else 0
            seq = tuple(tokens) if k % 3 else tokens
            hashes = hashing.hash_blocks(seq, block_size, parent, start)
            one_by_one, chain = [], parent
            for begin in range(start, len(tokens) - block_size + 1, block_size):
                chain = hashing.hash_block(chain, tokens[begin : begin + block_size])
                one_by_one.append(chain)
            out.append((hashes, hashes == one_by_one))
        return _digest(out)

    return {"block-hashes": block_hashes}


def scale_digest(num_requests: int) -> dict:
    elapsed, cpu, result, ok, tokens = bench_sim_scale.run_timed(num_requests, 64, "power_of_two",
                                                                 4, 64 * 150.0)  # fmt: skip
    return {"digest": run_digest(result), "cpu_s": cpu, "wall_s": elapsed, "completed": ok,
            "output_tokens": tokens}  # fmt: skip


def run_compiled(*args: str) -> dict:
    """This script's output with the mypyc build (benchmarks/build_sim_fast.py, built when
    missing or stale) first on PYTHONPATH. Run as a script, so no `pdserve` folder in the
    working directory shadows the build."""
    import build_sim_fast

    dest = build_sim_fast.build()
    path = os.pathsep.join(p for p in (str(dest), os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args],
                         env=dict(os.environ, PYTHONPATH=path), check=True, capture_output=True,
                         text=True)  # fmt: skip
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", type=int, default=0, help="only the scale run of this many requests")
    args = p.parse_args()
    out: dict = {"build": bench_sim_scale.build_kind()}
    if args.scale:
        out["scale"] = scale_digest(args.scale)
    else:
        out["native_hashing"] = hashing._NATIVE
        for name, scenario in (sim_scenarios() | sched_scenarios() | hash_scenarios()).items():
            out[name] = scenario()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
