"""PD disaggregation and cluster routing on the GPUs of one host, through `pdserve up`.

    PYTHONPATH=. python benchmarks/bench_pd_gpu.py --parts pd,fused1        # TTFT, PD goodput
    PYTHONPATH=. python benchmarks/bench_pd_gpu.py --parts fused2,fused2_prefix,fused2_rr

Each part starts one fleet (`pdserve up`, random weights of `--model`'s shape, the same engine
flags), warms it up on never-reused prompts, runs its measures, and stops it:

  pd         1 prefill + 1 decode worker (one GPU each), KV over CUDA IPC, every request
             disaggregated (`--pd-disaggregation always`): idle TTFT, goodput sweep
  fused1     one fused worker on one GPU: idle TTFT (the PD comparison's baseline)
  fused2     two fused workers (`--routing ttft`): goodput sweep
  pd3p1d     3 prefill + 1 decode workers (four GPUs), as `pd`: goodput sweep
  fused4     four fused workers (`--routing ttft`): goodput sweep (pd3p1d's baseline)
  fused2_prefix, fused2_rr   two fused workers with `--routing ttft` / `round_robin` and KV
             pools sized for the shared-prefix run (below): that run

Measures:
  idle TTFT    prompts of 1k-8k tokens one at a time (2 new tokens), `--ttft-repeats` each after
               one unmeasured request of that length; median per length
  goodput      the prefill-heavy mix (prompts uniform [0.5, 1.5] x `--mix-input-len`, outputs
               x `--mix-output-len`), Poisson arrivals, rates ascending until two miss; goodput
               = highest rate with >= `--attainment` of requests meeting TTFT and TPOT SLOs
  shared-prefix  G system prompts x P questions in random order, Poisson at `--prefix-rate`; each
               worker's KV pool holds about `--prefix-cache-fraction` of the system prompts, so
               where a request lands decides whether its prefix is cached
Prints a table and writes JSON (one file per run, every part's rows) to $OUT (default .).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.bench.arrivals import with_arrivals  # noqa: E402
from pdserve.bench.server_process import ServerProcess  # noqa: E402
from pdserve.bench.workload import (  # noqa: E402
    BenchRequest,
    random_workload,
    shared_prefix_workload,
    with_fresh_prompts,
)
from pdserve.metrics import summarize, ttft_s  # noqa: E402

OUT = Path(os.environ.get("OUT", "."))

FLEETS = {
    "pd": ["--prefill", "1", "--decode", "1", "--kv-transport", "cuda_ipc",
           "--pd-disaggregation", "always"],
    "pd3p1d": ["--prefill", "3", "--decode", "1", "--kv-transport", "cuda_ipc",
               "--pd-disaggregation", "always"],
    "fused1": ["--instances", "1"],
    "fused4": ["--instances", "4", "--routing", "ttft"],
    "fused2": ["--instances", "2", "--routing", "ttft"],
    "fused2_prefix": ["--instances", "2", "--routing", "ttft"],
    "fused2_rr": ["--instances", "2", "--routing", "round_robin"],
}  # fmt: skip
MEASURES = {
    "pd": ("ttft", "goodput"),
    "pd3p1d": ("goodput",),
    "fused1": ("ttft",),
    "fused4": ("goodput",),
    "fused2": ("goodput",),
    "fused2_prefix": ("prefix",),
    "fused2_rr": ("prefix",),
}


def start_fleet(part: str, args, extra: list[str]) -> ServerProcess:
    """`pdserve up` with the part's fleet flags, its output in $OUT/fleet-<part>.log."""
    flags = [args.pd_transport if f == "cuda_ipc" else f for f in FLEETS[part]]
    cmd = [sys.executable, "-m", "pdserve", "up", args.model, *flags, *extra,
           "--max-model-len", str(args.max_model_len),
           "--max-num-batched-tokens", str(args.max_num_batched_tokens),
           "--heartbeat-timeout-s", "10"]  # fmt: skip
    print(f"[{part}] {' '.join(cmd[1:])}", flush=True)
    with open(OUT / f"fleet-{part}.log", "w") as log:  # the child keeps its own descriptor
        return ServerProcess(cmd, log=log, start_timeout_s=args.start_timeout_s, label=part)


def warm_up(fleet: ServerProcess, args) -> None:
    """Every length the measures use, a few at once and one alone, on throwaway prompts."""
    lens = sorted({*args.ttft_lens, args.mix_input_len // 2, args.mix_input_len * 3 // 2})
    reqs = [BenchRequest(f"warm-{n}-{i}", (), 16, arrival_s=0.0) for n in lens for i in range(2)]
    reqs = [replace(r, prompt_token_ids=(0,) * int(r.request_id.split("-")[1])) for r in reqs]
    fleet.run(with_fresh_prompts(reqs, 7, args.vocab_size, "warm"))
    fleet.run(with_fresh_prompts(reqs[:1], 8, args.vocab_size, "warm1"))


def idle_ttft(fleet: ServerProcess, args) -> list[dict]:
    rows = []
    for n in args.ttft_lens:
        samples = []
        for k in range(args.ttft_repeats + 1):
            req = BenchRequest(f"ttft-{n}-{k}", (0,) * n, 2, arrival_s=0.0)
            run = fleet.run(with_fresh_prompts([req], 100 * n + k, args.vocab_size, f"t{k}"))
            tl = run.timelines[0]
            if not tl.is_success:
                raise RuntimeError(f"TTFT request of {n} tokens failed: {tl.error}")
            if k:  # the first of each length is not measured
                samples.append(ttft_s(tl) * 1e3)
        rows.append({"prompt_len": n, "ttft_ms_median": statistics.median(samples),
                     "ttft_ms": samples})  # fmt: skip
        print(f"  TTFT {n:5d} tokens: {statistics.median(samples):8.1f} ms "
              f"({', '.join(f'{s:.1f}' for s in samples)})", flush=True)  # fmt: skip
    return rows


def goodput_sweep(fleet: ServerProcess, args) -> dict:
    slos = {"ttft": args.slo_ttft_ms / 1e3, "tpot": args.slo_tpot_ms / 1e3}
    base = random_workload(args.mix_requests, args.mix_input_len, args.mix_output_len, 0.5,
                           args.vocab_size, seed=1)  # fmt: skip
    points, misses = [], 0
    for k, rate in enumerate(args.rates):
        reqs = with_fresh_prompts(
            with_arrivals(base, rate, seed=k), 1000 + k, args.vocab_size, f"g{k}"
        )
        probes = diagnose(fleet, f"{fleet.label}-rate{rate:g}") if rate in args.diagnose else []
        run = fleet.run(reqs)
        for probe in probes:
            probe.wait()
        s = summarize(run.timelines, run.duration_s, slos, percentiles=(50, 90)).to_dict()
        points.append({"rate": rate, **s})
        print(f"  rate {rate:5.2f}: attainment {100 * s['slo_attainment']:5.1f} %, TTFT p90 "
              f"{s['p90_ttft_ms']:7.1f} ms, TPOT p90 {s['p90_tpot_ms']:6.1f} ms, "
              f"{s['completed']}/{s['num_requests']} ok", flush=True)  # fmt: skip
        misses = 0 if s["slo_attainment"] >= args.attainment else misses + 1
        if misses >= 2:
            break
    ok = [p["rate"] for p in points if p["slo_attainment"] >= args.attainment]
    return {"slos_ms": {k: v * 1e3 for k, v in slos.items()}, "attainment": args.attainment,
            "goodput_rps": max(ok, default=0.0), "points": points}  # fmt: skip


def diagnose(fleet: ServerProcess, tag: str, delay_s: float = 3.0, seconds: int = 6) -> list:
    """In the background, from `delay_s` into a run: py-spy on every worker process (where it is
    installed and allowed) and nvidia-smi's utilization per GPU, into $OUT/diag-<tag>-*."""
    pids = subprocess.run(["pgrep", "-P", str(fleet.proc.pid)], capture_output=True,
                          text=True).stdout.split()  # fmt: skip
    cmds = [f"nvidia-smi dmon -s u -c {seconds} > {OUT}/diag-{tag}-gpu.txt 2>&1"]
    cmds += [f"{py_spy()} record --nonblocking -r 200 -d {seconds} -f raw -p {pid} "
             f"-o {OUT}/diag-{tag}-pid{pid}.txt > /dev/null 2>&1" for pid in pids]  # fmt: skip
    return [subprocess.Popen(f"sleep {delay_s}; {cmd}", shell=True) for cmd in cmds]


def py_spy() -> str:
    """py-spy on PATH, beside this interpreter, or in a `pip --target` dir on sys.path."""
    import shutil

    places = [Path(sys.executable).parent, *(Path(p) / "bin" for p in sys.path if p)]
    found = shutil.which("py-spy") or next(
        (str(d / "py-spy") for d in places if (d / "py-spy").exists()), None
    )
    return found or "py-spy"


def prefix_run(fleet: ServerProcess, args) -> dict:
    reqs = shared_prefix_workload(args.prefix_groups, args.prefix_questions, args.prefix_system_len,
                                  args.prefix_question_len, args.prefix_output_len,
                                  args.vocab_size, seed=3)  # fmt: skip
    # In random order: interleaved g0, g1, ..., round-robin over an even number of workers sent
    # every group to one worker (a perfect partition: the first GPU run, 2026-11-27 s4).
    random.Random(3).shuffle(reqs)
    run = fleet.run(with_arrivals(reqs, args.prefix_rate, seed=3))
    s = summarize(run.timelines, run.duration_s, percentiles=(50, 90, 99)).to_dict()
    print(f"  shared prefix at {args.prefix_rate} req/s: TTFT p50 {s['p50_ttft_ms']:.1f} ms, "
          f"p90 {s['p90_ttft_ms']:.1f} ms, {s['output_throughput']:.0f} out tok/s, "
          f"{s['completed']}/{s['num_requests']} ok", flush=True)  # fmt: skip
    s["prefix_hit_tokens"] = cluster_prefix_hits(fleet)
    return s


def cluster_prefix_hits(fleet: ServerProcess) -> float:
    """The controller's cluster prefix-hit tokens (all instances) from /metrics."""
    import httpx

    text = httpx.get(f"{fleet.url}/metrics", timeout=10).text
    total = None
    for line in text.splitlines():
        if line.startswith("pdserve:controller_prefix_hit_tokens_total") and not line.startswith(
            "#"
        ):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total or 0.0


def num_blocks_for_prefix(args) -> int:
    """Per worker: `--prefix-cache-fraction` of all system prompts, one more system prompt (a
    request whose prefix is not cached holds a fresh copy while it runs) and the questions and
    answers of 16 running requests (those with a hit share the cached system blocks).
    (2026-11-27: sized for 32 whole running requests, each worker held every system prompt and
    round-robin hit as often as `ttft`.)"""
    bs = 16
    system = args.prefix_system_len * (args.prefix_groups * args.prefix_cache_fraction + 1)
    running = 16 * (args.prefix_question_len + args.prefix_output_len + bs)
    return int((system + running) // bs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parts", default="pd,fused1,fused2,fused2_prefix,fused2_rr")
    p.add_argument("--model", default="dummy:llama-3.1-8b")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--pd-transport", default="cuda_ipc", help="nixl for a CPU smoke run")
    p.add_argument("--max-model-len", type=int, default=10240)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--start-timeout-s", type=float, default=400)
    p.add_argument("--ttft-lens", default="1024,2048,4096,8192")
    p.add_argument("--ttft-repeats", type=int, default=3)
    # Long enough per rate to reach steady state: 32 requests (2026-11-27) made a burst of
    # 2-16 s that a fleet past its capacity still absorbed (the simulator showed it).
    p.add_argument("--rates", default="3,4,5,6,7,8,10")
    p.add_argument("--mix-requests", type=int, default=150)
    p.add_argument("--mix-input-len", type=int, default=4096)
    p.add_argument("--mix-output-len", type=int, default=128)
    p.add_argument("--slo-ttft-ms", type=float, default=1000)
    p.add_argument("--slo-tpot-ms", type=float, default=25)
    p.add_argument("--attainment", type=float, default=0.9)
    p.add_argument("--skip", default="", help="measures not to run: ttft,goodput,prefix")
    p.add_argument("--diagnose", default="", help="rates at which to profile the workers")
    p.add_argument("--prefix-groups", type=int, default=12)
    p.add_argument("--prefix-questions", type=int, default=40)
    p.add_argument("--prefix-system-len", type=int, default=4096)
    p.add_argument("--prefix-question-len", type=int, default=128)
    p.add_argument("--prefix-output-len", type=int, default=64)
    p.add_argument("--prefix-rate", type=float, default=8)
    p.add_argument("--prefix-cache-fraction", type=float, default=0.6)
    args = p.parse_args()
    args.ttft_lens = [int(x) for x in args.ttft_lens.split(",")]
    args.rates = [float(x) for x in args.rates.split(",")]
    args.diagnose = [float(x) for x in args.diagnose.split(",") if x]
    args.skip = [m for m in args.skip.split(",") if m]
    OUT.mkdir(parents=True, exist_ok=True)
    commit = (
        os.environ.get("PDSERVE_COMMIT")
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
    )
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": commit, "args": vars(args),
              "gpus": gpu_names(), "parts": {}}  # fmt: skip
    path = OUT / f"bench_pd_gpu_{args.parts.replace(',', '_')}.json"
    for part in args.parts.split(","):
        extra = []
        if "prefix" in MEASURES[part]:
            extra = ["--num-blocks", str(num_blocks_for_prefix(args))]
        entry: dict = {}
        result["parts"][part] = entry
        try:
            fleet = start_fleet(part, args, extra)
        except Exception as e:
            entry["error"] = str(e)
            print(f"[{part}] {e}", flush=True)
            continue
        entry.update(command=" ".join(fleet.cmd[1:]), start_s=fleet.start_s)
        try:
            warm_up(fleet, args)
            for measure in (m for m in MEASURES[part] if m not in args.skip):
                fn = {"ttft": idle_ttft, "goodput": goodput_sweep, "prefix": prefix_run}[measure]
                entry[measure] = fn(fleet, args)
                path.write_text(json.dumps(result, indent=1) + "\n")
        except Exception as e:
            entry["error"] = repr(e)
            print(f"[{part}] error: {e!r}", flush=True)
        finally:
            fleet.stop()
        path.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)


def gpu_names() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        return [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
    except (OSError, subprocess.SubprocessError):
        return []


def print_table(result: dict) -> None:
    parts = result["parts"]
    print(f"\n{result['date']} commit {result['commit']}; {'; '.join(result['gpus'])}")
    if "ttft" in parts.get("pd", {}) and "ttft" in parts.get("fused1", {}):
        print(f"{'prompt':>8} {'fused TTFT ms':>14} {'PD TTFT ms':>11} {'PD / fused':>10}")
        for f, d in zip(parts["fused1"]["ttft"], parts["pd"]["ttft"]):
            ratio = d["ttft_ms_median"] / f["ttft_ms_median"]
            print(f"{f['prompt_len']:>8} {f['ttft_ms_median']:>14.1f} "
                  f"{d['ttft_ms_median']:>11.1f} {100 * (ratio - 1):>+9.1f}%")  # fmt: skip
    for name, entry in parts.items():
        if "goodput" in entry:
            print(f"goodput {name:10s}: {entry['goodput']['goodput_rps']:g} req/s")
        if "prefix" in entry:
            s = entry["prefix"]
            print(f"shared prefix {name:10s}: TTFT p90 {s['p90_ttft_ms']:.1f} ms, p50 "
                  f"{s['p50_ttft_ms']:.1f} ms, {s['output_throughput']:.0f} out tok/s, "
                  f"hit tokens {s['prefix_hit_tokens']}")  # fmt: skip
        if "error" in entry:
            print(f"{name}: error {entry['error'][:300]}")


if __name__ == "__main__":
    main()
