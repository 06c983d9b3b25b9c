"""Simulator fidelity: one workload through the real server and through the simulator.

    # CPU, embedded model, one instance and a 2-instance cluster (`pdserve up`)
    python benchmarks/bench_sim_fidelity.py --device cpu --rates 0.5,1,2
    python benchmarks/bench_sim_fidelity.py --device cpu --instances 2 --rates 1,2,4
    # H100, Llama-3.1-8B shape with random weights
    python benchmarks/bench_sim_fidelity.py --device cuda --model dummy:llama-3.1-8b --rates 2,8,16

Steps, all on this machine:
  1. profile: `pdserve profile` on the device (the same engine flags as the server), unless
     `--profile FILE` gives one;
  2. calibration: a few requests one at a time through the real server, to measure what the
     step-time profile does not hold: the front end's fixed latency (HTTP, routing, the worker
     hop) before a request reaches the scheduler and after its tokens leave it, and the worker
     loop's host time per step beyond `EngineCore.step()` (`--no-calibrate`: both 0);
  3. per rate: the workload (random prompts, `--input-len` / `--output-len`, Poisson arrivals)
     through the real server with the bench client, then through the simulator
     (`pdserve.sim.run.simulate`, the measured profile, the same fleet and routing policy);
  4. a table of mean and p90 TTFT and TPOT, real vs sim, with the error in %, and JSON.

The server runs as a subprocess (`pdserve serve`, or `pdserve up --instances N`), the client in
this process; nothing needs the network beyond 127.0.0.1. On a small shared CPU box the server,
its workers, the client and other work share the cores: note the load with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fidelity_trace import breakdown, median_or_nan, traced_overheads  # noqa: E402

from pdserve.bench.arrivals import with_arrivals  # noqa: E402
from pdserve.bench.client import ClientConfig, LoadGenerator  # noqa: E402
from pdserve.bench.server_process import ServerProcess  # noqa: E402
from pdserve.bench.workload import random_workload, with_fresh_prompts  # noqa: E402
from pdserve.metrics import summarize, tpot_s, ttft_s  # noqa: E402

METRICS = ("ttft", "tpot")


def engine_flags(args) -> list[str]:
    flags = ["--device", args.device,
             "--max-num-batched-tokens", str(args.max_num_batched_tokens),
             "--max-num-seqs", str(args.max_num_seqs),
             "--block-size", str(args.block_size)]  # fmt: skip
    if args.model:
        flags += ["--model", args.model]
    if args.num_blocks:
        flags += ["--num-blocks", str(args.num_blocks)]
    if args.max_model_len:
        flags += ["--max-model-len", str(args.max_model_len)]
    return flags


def measure_profile(args, path: Path) -> None:
    """`pdserve profile` with the server's engine flags (its own parser: no --block-size)."""
    cmd = [sys.executable, "-m", "pdserve", "profile", "--device", args.device,
           "--max-num-batched-tokens", str(args.max_num_batched_tokens),
           "--prefill-lens", args.prefill_lens, "--batch-sizes", args.batch_sizes,
           "--context-lens", args.context_lens, "--repeats", str(args.repeats),
           "--mixed-prefill-len", str(args.input_len),
           "--out", str(path)]  # fmt: skip
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    print("profile:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, env=_env(args), timeout=3600)


def _env(args, step_trace: str = "") -> dict:
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    if step_trace:  # each worker appends its steps to STEP_TRACE.<instance id>
        env["PDSERVE_STEP_TRACE"] = step_trace
    return env


class StepTraceReader:
    """The workers' step-trace files (`PDSERVE_STEP_TRACE`): the lines added since the last
    read, times moved onto a client run's clock."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.offsets: dict[str, int] = {}

    def read(self, t0: float) -> dict:
        steps, submits = {}, {}
        for path in sorted(glob.glob(self.prefix + ".*")):
            with open(path) as f:
                f.seek(self.offsets.get(path, 0))
                lines = f.readlines()
                self.offsets[path] = f.tell()
            worker = path.rsplit(".", 1)[1]
            steps[worker], submits[worker] = [], []
            for line in lines:
                d = json.loads(line)
                if "submit" in d:  # [time, prompt length, request id]
                    submits[worker].append([d["t"] - t0, d["prompt_len"], d["submit"]])
                elif d["shape"] is not None:  # [start, end, 4 shape ints, in flight, first ids
                    # (, with the step timer: the launched step's host s, the collected steps'
                    # [wait, GPU span, GPU gap, kind])]
                    row = [d["t0"] - t0, d["t1"] - t0, *d["shape"], int(d["in_flight"]),
                           d["first"]]  # fmt: skip
                    if "collected" in d:
                        row += [d["launch_s"], d["collected"]]
                    steps[worker].append(row)
        return {"steps": steps, "submits": submits}


def run_client(server: ServerProcess, requests) -> tuple:
    """The requests through the bench client (as `ServerProcess.run`); -> (RunResult, the
    client's clock at the run's start, to put worker traces on the run's clock)."""
    gen = LoadGenerator(ClientConfig(server.url, server.model, prompt_format="tokens",
                                     show_progress=False))  # fmt: skip
    result = asyncio.run(gen.run(requests))
    return result, gen._t0  # perf_counter: CLOCK_MONOTONIC, as the workers' time.monotonic


def per_request(timelines) -> list[list]:
    """[send, prompt len, TTFT, TPOT, output tokens, first token, end] per request (seconds)."""
    return [[tl.send_s, tl.prompt_len, ttft_s(tl), tpot_s(tl), tl.num_output_tokens,
             tl.first_token_s, tl.end_s] for tl in timelines]  # fmt: skip


def start_server(args, step_trace: str = "") -> ServerProcess:
    """`pdserve serve` (one instance) or `pdserve up --instances N`."""
    cmd = [sys.executable, "-m", "pdserve"]
    if args.instances == 1:
        cmd += ["serve"]
    else:
        # A loaded box delays heartbeats: a short timeout takes workers out of rotation.
        cmd += ["up", "--instances", str(args.instances), "--routing", args.routing,
                "--heartbeat-timeout-s", str(args.heartbeat_timeout_s)]  # fmt: skip
    cmd += engine_flags(args)
    if args.threads:
        cmd += ["--worker-threads", str(args.threads)]
    print("server:", " ".join(cmd[1:]), flush=True)
    server = ServerProcess(cmd, env=_env(args, step_trace), start_timeout_s=args.start_timeout_s)
    # `pdserve up` answers /health before its workers registered (503 to requests till then)
    probe = random_workload(1, 8, 1, 0.0, args.vocab_size, seed=args.seed + 4000)
    deadline = time.monotonic() + args.start_timeout_s
    while not server.run(probe).timelines[0].is_success:
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the server answered no request in {args.start_timeout_s:g} s")
        time.sleep(1.0)
    return server


def sim_run(requests, profile, args, overheads: dict, trace: bool = False, jitter_seed=None):
    """The workload through the simulator; `jitter_seed`: the simulated instances draw each
    step's host launch time from the profile's measured distribution (`launch_quantiles_s`)
    with that seed, where the instance can (an async-scheduling instance; else the mean)."""
    from pdserve.cluster.policies import PolicyConfig
    from pdserve.sim.cluster import SimConfig
    from pdserve.sim.profiles import with_corrections
    from pdserve.sim.run import simulate

    if "decode_s" in overheads:  # measured per-step corrections (`traced_overheads`)
        scale, pipelined = overheads.get("scale", 1.0), overheads.get("pipelined")
        cost = with_corrections(profile.cost, overheads["decode_s"], overheads["prefill_s"],
                                scale, pipelined)  # fmt: skip
        profile = replace(profile, cost=cost)
    fleet = f"fused:{args.instances}"
    config = SimConfig(
        routing=args.routing,
        policy=PolicyConfig(seed=args.seed),
        request_overhead_s=overheads["request_s"],
        step_overhead_s=overheads["step_s"],
        trace=trace,
    )
    if jitter_seed is None:
        return simulate(requests, fleet, {"": profile}, {"": 0.0}, config)
    # `simulate`'s steps, each instance given its own seeded draws
    import random
    from types import SimpleNamespace

    from pdserve.sim.cluster import SimCluster
    from pdserve.sim.fleet import build_instances, parse_fleet

    instances = build_instances(parse_fleet(fleet), lambda gpu: profile)
    for inst in instances:
        if hasattr(inst, "jitter"):
            inst.jitter = random.Random(jitter_seed * 1000 + inst.index)
    policy = replace(config.policy, prior=profile.cost,
                     max_batched_tokens=profile.max_num_batched_tokens)  # fmt: skip
    sim = SimCluster(instances, replace(config, policy=policy), profile.kv_bytes_per_token)
    return SimpleNamespace(result=sim.run(requests))


def sim_steps(sim) -> dict:
    """The simulated steps per instance: [start, end, prefill tokens, decode seqs]."""
    steps: dict[str, list] = {}
    names = {i.index: i.instance_id for i in sim.result.instances}
    for ev in sim.result.trace or ():
        if ev.get("ph") == "X" and ev.get("tid") == 0:
            a = ev["args"]
            steps.setdefault(names[ev["pid"]], []).append(
                [ev["ts"] / 1e6, (ev["ts"] + ev["dur"]) / 1e6, a["prefill_tokens"],
                 a["decode_seqs"]])  # fmt: skip
    return steps


def calibration_requests(args, round_no: int = 0):
    """The calibration requests (the same lengths each round; a later round's prompts are new:
    a prompt seen before would be a prefix-cache hit)."""
    requests = random_workload(args.calibration_requests, args.input_len, args.output_len,
                               args.range_ratio, args.vocab_size, args.seed + 1000)  # fmt: skip
    if round_no:
        requests = with_fresh_prompts(requests, args.seed + 3000 + round_no, args.vocab_size)
    return requests


def calibrate(
    server: ServerProcess, profile, args, trace=None, round_no: int = 0
) -> tuple[dict, list[dict]]:
    """Fixed costs outside `EngineCore.step()`, from requests sent one at a time (no queueing);
    -> (overheads, the real requests' TTFT and TPOT, kept so a re-simulation can redo this).
    CPU workers share the box's cores: there, one request per instance at a time (the router
    sends one to each), so the steps are timed while every worker computes, as in the run
    (each request's record then carries the whole group's trace: the scale is a median)."""
    real = []
    requests = calibration_requests(args, round_no)
    group = args.instances if args.device == "cpu" else 1
    for k in range(0, len(requests), group):  # each group once the last one ended
        result, t0 = run_client(server, [replace(r, arrival_s=0.0)
                                         for r in requests[k : k + group]])  # fmt: skip
        steps = trace.read(t0) if trace else {}
        for tl in result.timelines:
            if not tl.is_success:
                raise RuntimeError(f"calibration request failed: {tl.error}")
            real.append({"ttft_s": ttft_s(tl), "tpot_s": tpot_s(tl),
                         "request": per_request([tl])[0], **steps})  # fmt: skip
    traced = traced_overheads(real, profile.cost, args.device == "cpu")
    return traced or overheads_from(real, profile, args), real


def overheads_from(real: list[dict], profile, args) -> dict:
    """From the calibration requests' real TTFT and TPOT and their simulation with no overheads:

        real TTFT - sim TTFT = request_s                  (front end in and out, per request)
        real TPOT - sim TPOT = step_s                     (worker loop host time, per step)

    Medians resist a noisy box. step_s is negative when the real engine runs steps faster than
    the profile timed them (the profile times synchronous steps, a GPU server overlaps the
    host's part); it cannot hide more than that part: bounded by half the profiled fixed cost."""
    zero = {"request_s": 0.0, "step_s": 0.0}
    ttft_d, tpot_d = [], []
    for r, measured in zip(calibration_requests(args), real):
        sim = sim_run([replace(r, arrival_s=0.0)], profile, args, zero).result.timelines[0]
        ttft_d.append(measured["ttft_s"] - ttft_s(sim))
        if measured["tpot_s"] is not None and tpot_s(sim) is not None:
            tpot_d.append(measured["tpot_s"] - tpot_s(sim))
    step_s = max(statistics.median(tpot_d), -0.5 * profile.cost.base_s) if tpot_d else 0.0
    # The first token's step (one prefill step) also carries the per-step host time.
    request_s = max(statistics.median(ttft_d) - step_s, 0.0)
    return {"request_s": request_s, "step_s": step_s}


def print_breakdown(point: dict, profile) -> None:
    b = point["breakdown"] = breakdown(point, profile.cost)
    sim = [st for steps in point["sim_steps"].values() for st in steps]
    dec = [e - s for s, e, p, _ in sim if not p]
    pre = [e - s for s, e, p, _ in sim if p]
    print(
        f"  real steps: decode {b['decode_step']:.2f} ms (real - model {b['decode_model']:+.2f}, "
        f"{b['num_decode_steps']} steps), prefill {b['prefill_step']:.2f} ms "
        f"({b['prefill_model']:+.2f}, {b['num_prefill_steps']}); loop gap {b['gap']:.2f} ms; "
        f"sim steps: decode {median_or_nan(dec) * 1e3:.2f}, "
        f"prefill {median_or_nan(pre) * 1e3:.2f} ms"
    )
    print(f"  real TTFT parts: front in {b['front_in']:.2f} ms, engine {b['engine']:.2f} ms, "
          f"front out {b['front_out']:.2f} ms ({b['num_matched_requests']} requests)")  # fmt: skip
    launch = b["prefill_launch"]
    if launch["n"]:
        host = getattr(profile.cost, "host_time", None)
        model = f", model mean {host(1) * 1e3:.2f} ms" if host else ""
        print(
            f"  real prefill launches (async): mean {launch['mean']:.2f}, p50 "
            f"{launch['p50']:.2f}, p90 {launch['p90']:.2f} ms ({launch['n']}){model}"
        )


def print_rows(rows: list[dict]) -> None:
    print(f"  {'':18s} {'real':>9s} {'sim':>9s} {'error':>8s}   real's 90 % interval")
    for x in rows:
        print(f"  {x['metric']:18s} {x['real']:9.1f} {x['sim']:9.1f} {x['error_pct']:+7.1f}%"
              f"   {x['real_lo_pct']:+6.1f} .. {x['real_hi_pct']:+6.1f} %")  # fmt: skip


def with_table(cost, profile_dict: dict, fit: str):
    """`cost` with the profile's decode steps' miss per batch size (`with_decode_table`),
    against their device spans for a split fit, else their times."""
    from pdserve.cluster.cost_model import StepShape
    from pdserve.sim.profiles import ServedCostModel

    samples = profile_dict["samples"]
    key = "device_s" if fit == "split" else "time_s"
    return ServedCostModel.of(cost).with_decode_table([StepShape(*s["shape"]) for s in samples],
                                                      [s[key] for s in samples])  # fmt: skip


def split_cost(profile_dict: dict):
    """`ServedCostModel.fit_split` of a profile's samples (host and device time: a GPU's)."""
    from pdserve.cluster.cost_model import StepShape
    from pdserve.sim.profiles import ServedCostModel

    samples = profile_dict["samples"]
    if not samples or any("host_s" not in s for s in samples):
        raise SystemExit("--fit split needs a profile with host/device times (a GPU profile)")
    return ServedCostModel.fit_split([StepShape(*s["shape"]) for s in samples],
                                     [s["host_s"] for s in samples],
                                     [s["device_s"] for s in samples])  # fmt: skip


def interval(point: dict, metric: str, stat: str) -> dict:
    """The real value's bootstrap interval (`real_interval`) as % of the real value."""
    lo, hi = real_interval(point["real_requests"], metric, stat)
    real = point["real"].get(f"{stat}_{metric}_ms") or math.nan
    return {"real_lo_pct": 100 * (lo - real) / real, "real_hi_pct": 100 * (hi - real) / real}


def describe(overheads: dict) -> str:
    text = f"front end {overheads['request_s'] * 1e3:.2f} ms per request"
    if "decode_s" in overheads:
        return text + (f", steps x{overheads.get('scale', 1.0):.3f} then decode "
                       f"{overheads['decode_s'] * 1e3:+.2f} ms, prefill "
                       f"{overheads['prefill_s'] * 1e3:+.2f} ms")  # fmt: skip
    return text + f", worker loop {overheads['step_s'] * 1e3:.2f} ms per step"


def row(metric: str, stat: str, real: dict, sim: dict) -> dict:
    key = f"{stat}_{metric}_ms"
    r, s = real.get(key), sim.get(key)
    err = 100 * (s - r) / r if r and s is not None else math.nan
    return {"metric": f"{stat} {metric.upper()} (ms)", "real": r, "sim": s, "error_pct": err}


def sim_summary(requests, profile, args, overheads: dict, jitter_runs: int = 0) -> tuple:
    """The simulation's summary dict and the (first) run: one deterministic run, or with
    `jitter_runs` that many runs with drawn host launch times (seeds 0..n-1), each metric the
    mean of the runs' (a 40-request run's p90 is its 4th slowest request: one draw says
    little)."""
    if not jitter_runs:
        sim = sim_run(requests, profile, args, overheads, trace=True)
        return summarize(sim.result.timelines, sim.result.duration_s,
                         percentiles=(50, 90)).to_dict(), sim  # fmt: skip
    runs, first = [], None
    for seed in range(jitter_runs):
        sim = sim_run(requests, profile, args, overheads, trace=seed == 0, jitter_seed=seed)
        first = first or sim
        runs.append(summarize(sim.result.timelines, sim.result.duration_s,
                              percentiles=(50, 90)).to_dict())  # fmt: skip
    out = dict(runs[0])
    for key, value in runs[0].items():
        if key.endswith("_ms") and isinstance(value, float):
            out[key] = statistics.fmean(r[key] for r in runs)
    return out | {"jitter_runs": jitter_runs}, first


def real_interval(real_requests: list, metric: str, stat: str, level: float = 0.9) -> tuple:
    """The real run's own sampling noise: a `level` bootstrap interval (1,000 resamples of its
    requests, seeded) of the statistic, ms. 40 requests with a heavy-tailed TTFT (host jitter)
    give the mean a +-7 % interval on the H100 run: an error inside it is noise."""
    import random

    from pdserve.metrics import percentile

    column = {"ttft": 2, "tpot": 3}[metric]
    xs = [r[column] * 1e3 for r in real_requests if r[column] is not None]
    if len(xs) < 2:
        return (math.nan, math.nan)
    reduce = statistics.fmean if stat == "mean" else (lambda v: percentile(v, float(stat[1:])))
    rng = random.Random(0)
    stats = sorted(reduce(rng.choices(xs, k=len(xs))) for _ in range(1000))
    lo = (1 - level) / 2
    return (percentile(stats, 100 * lo), percentile(stats, 100 * (1 - lo)))


def read_record(path: Path) -> dict:
    """A recorded run's JSON; `.json.gz` too (a GPU run's step trace makes it megabytes)."""
    if path.suffix == ".gz":
        import gzip

        return json.loads(gzip.decompress(path.read_bytes()))
    return json.loads(path.read_text())


def resimulate(
    path: Path,
    fit: str = "served",
    offsets_ms: tuple | None = None,
    step_overhead_ms: float | None = None,
    calibration_kind: str = "traced",
    jitter_runs: int = 0,
    decode_table: bool = False,
) -> None:
    """Simulate a recorded fidelity run's workload again, its profile refitted from its samples
    (`fit`: "served" = `ServedCostModel.fit`, "linear" = `StepCostModel.fit`), against the
    recorded real results (no server, no device): for checking a cost-model change on runs
    made elsewhere (e.g. on an H100). The calibration is redone with the refitted model: from
    its traces when the record has them (`traced_overheads`; `calibration_kind` "residual": as
    before them) or from its TTFT/TPOT (`overheads_from`); a record without either (before
    03f9bda) gets its calibration requests' real TTFT back as their simulation with the
    recorded fit plus the recorded front end, so only the change of the prefill's model moves
    the front end. `offsets_ms`: (decode, prefill) per-step corrections to use instead (e.g.
    from a single-stream run). `fit` "split": `ServedCostModel.fit_split` on the samples' host
    and device times (a GPU profile), `jitter_runs`: see `sim_summary`."""
    import argparse as _argparse

    from pdserve.cluster.cost_model import StepCostModel, StepShape
    from pdserve.sim.profiles import Profile, ServedCostModel, cost_from_dict

    rec = read_record(path)
    args = _argparse.Namespace(**rec["args"])
    profile_dict = rec.get("profile_data") or json.loads(
        (path.parent / Path(rec["profile"]).name).read_text())  # fmt: skip
    samples = profile_dict["samples"]
    shapes = [StepShape(*s["shape"]) for s in samples]
    if fit == "split":
        cost = split_cost(profile_dict)
    else:
        model = {"served": ServedCostModel, "linear": StepCostModel}[fit]
        cost = model.fit(shapes, [s["time_s"] for s in samples])
    if decode_table:
        cost = with_table(cost, profile_dict, fit)
    profile = replace(Profile.from_dict(profile_dict), cost=cost)
    print(f"refitted {profile.name} ({fit}): {cost}")

    def recalibrate(calibration: list | None, recorded: dict) -> dict:
        traced = calibration and calibration_kind == "traced"
        overheads = traced_overheads(calibration, cost, scaled) if traced else None
        if overheads is None and calibration:
            overheads = overheads_from(calibration, profile, args)
        if overheads is None:  # no calibration recorded: rebuild its TTFTs from the recorded fit
            old = replace(profile, cost=cost_from_dict(rec["profile_cost"]))
            old_front = recorded["request_s"] + recorded["step_s"]
            zero = {"request_s": 0.0, "step_s": 0.0}
            calibration = []
            for r in calibration_requests(args):
                tl = sim_run([replace(r, arrival_s=0.0)], old, args, zero).result.timelines[0]
                calibration.append({"ttft_s": ttft_s(tl) + old_front, "tpot_s": None})
            overheads = overheads_from(calibration, profile, args)
        if offsets_ms is not None:  # the server runs async on a GPU by default
            overheads |= {"step_s": 0.0, "decode_s": offsets_ms[0] / 1e3,
                          "prefill_s": offsets_ms[1] / 1e3,
                          "pipelined": args.device.startswith("cuda")}  # fmt: skip
        if step_overhead_ms is not None:
            overheads["step_s"] = step_overhead_ms / 1e3
        print(f"overheads: {describe(overheads)}")
        return overheads

    scaled = args.device == "cpu"
    overheads = recalibrate(rec.get("calibration_real"), rec["overheads_s"])
    base = random_workload(args.num_prompts, args.input_len, args.output_len,
                           args.range_ratio, args.vocab_size, seed=args.seed)  # fmt: skip
    points = []
    for k, point in enumerate(rec["points"]):
        requests = with_fresh_prompts(with_arrivals(base, point["rate"], seed=args.seed),
                                args.seed + k, args.vocab_size)  # fmt: skip
        if "calibration_real" in point:  # calibrated right before this rate
            overheads = recalibrate(point["calibration_real"], point["overheads_s"])
        s, sim = sim_summary(requests, profile, args, overheads, jitter_runs)
        rows = [row(m, stat, point["real"], s) | interval(point, m, stat)
                for m in METRICS for stat in ("mean", "p90")]  # fmt: skip
        new = {**point, "rows": rows, "sim": s, "overheads_s": overheads,
               "sim_requests": per_request(sim.result.timelines),
               "sim_steps": sim_steps(sim)}  # fmt: skip
        print(f"\nrate {point['rate']:g} req/s (real run recorded {rec['label']})")
        print_rows(rows)
        if "real_trace" in point:
            print_breakdown(new, profile)
        points.append(new)
    suffix = ("-table" if decode_table else "") + (f"-jitter{jitter_runs}" if jitter_runs else "")
    stem = path.name.removesuffix(".gz").removesuffix(".json")
    out = path.with_name(stem + f"-resim-{fit}-{calibration_kind}{suffix}.json")
    # The real run's traces stay in the record it names (`resimulated_from`).
    traces = ("real_trace", "calibration_real")
    points = [{k: v for k, v in point.items() if k not in traces} for point in points]
    out.write_text(json.dumps({**rec, "command": " ".join(sys.argv), "profile_cost":
                               cost.to_dict(), "overheads_s": overheads,
                               "calibration_real": None, "resimulated_from": path.name,
                               "points": points}, indent=1) + "\n")  # fmt: skip
    print(f"\nwrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="", help="'' = embedded model, or dummy:<shape> / path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (CPU)")
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--routing", default=None, help="cluster policy (default: the controller's)")
    p.add_argument("--rates", default="0.5,1,2", help="req/s, comma-separated")
    p.add_argument("--num-prompts", type=int, default=40, help="per rate")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--range-ratio", type=float, default=0.5)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-blocks", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=0)
    p.add_argument("--profile", default=None, help="use this profile JSON instead of measuring")
    p.add_argument("--prefill-lens", default="16,64,128,256,512")
    p.add_argument("--batch-sizes", default="1,2,4,8,16")
    p.add_argument("--context-lens", default="64,256")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-calibrate", action="store_true", help="no front-end / loop overheads")
    p.add_argument("--calibration-requests", type=int, default=6)
    p.add_argument(
        "--calibrate-each-rate",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="calibrate before each rate (default: on CPU), else before the first",
    )
    p.add_argument("--no-step-trace", dest="step_trace", action="store_false",
                   help="no worker step trace ($PDSERVE_STEP_TRACE) in the JSON")  # fmt: skip
    p.add_argument("--start-timeout-s", type=float, default=600.0)
    p.add_argument(
        "--heartbeat-timeout-s",
        type=float,
        default=60.0,
        help="pdserve up's (a worker heartbeats between steps: a CPU step takes s)",
    )
    p.add_argument("--result-dir", default=str(ROOT / "docs/results/sim_fidelity"))
    p.add_argument("--label", default=None)
    p.add_argument(
        "--resim",
        default=None,
        metavar="FIDELITY_JSON",
        help="no real run: simulate that recorded run again (profile refitted)",
    )
    p.add_argument(
        "--step-overhead-ms",
        type=float,
        default=None,
        help="--resim: replace the recorded per-step correction",
    )
    p.add_argument("--fit", default="served", choices=("served", "linear", "split"),
                   help="cost model (--resim refits; split: a GPU profile's host/device times, "
                        "for an async engine)")  # fmt: skip
    p.add_argument(
        "--decode-table",
        action="store_true",
        help="price decode steps per measured batch size (the line's miss)",
    )
    p.add_argument("--jitter-runs", type=int, default=0,
                   help="sim: mean of N runs drawing host launch times (0: one run)")  # fmt: skip
    p.add_argument(
        "--calibration",
        default="traced",
        choices=("traced", "residual"),
        help="--resim: from the recorded traces, or from TTFT/TPOT residuals",
    )
    p.add_argument("--offsets-ms", default=None, metavar="DECODE,PREFILL",
                   help="--resim: decode-only and prefill steps' corrections")  # fmt: skip
    args = p.parse_args()
    if args.resim:
        offsets = tuple(float(v) for v in args.offsets_ms.split(",")) if args.offsets_ms else None
        resimulate(Path(args.resim), args.fit, offsets, args.step_overhead_ms, args.calibration,
                   args.jitter_runs, args.decode_table)  # fmt: skip
        return
    if args.routing is None:
        from pdserve.cluster.policies import DEFAULT_POLICY

        args.routing = DEFAULT_POLICY
    from pdserve.sim.profiles import load_profile

    out = Path(args.result_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_name = (args.model or "embedded").replace("dummy:", "").replace("/", "_")
    label = args.label or f"{args.device}-{model_name}-x{args.instances}"
    profile_path = Path(args.profile) if args.profile else out / f"profile-{label}.json"
    if not args.profile:
        measure_profile(args, profile_path)
    profile = load_profile(str(profile_path))
    if args.fit == "split":  # the profile's host/device times (GPU) for an async engine
        try:
            profile = replace(profile, cost=split_cost(json.loads(profile_path.read_text())))
        except (SystemExit, ValueError) as e:  # the real run is worth more: go on, served fit
            print(f"--fit split: {e}; the profile's own fit instead (--resim can refit)")
            args.fit = "served"
    if args.decode_table:
        cost = with_table(profile.cost, json.loads(profile_path.read_text()), args.fit)
        profile = replace(profile, cost=cost)
    print(f"profile {profile.name}: {profile.cost}", flush=True)

    load_before = os.getloadavg()
    trace_prefix = str(out / f".step-trace-{label}-{os.getpid()}")
    trace = StepTraceReader(trace_prefix) if args.step_trace else None
    server = start_server(args, trace_prefix if trace else "")
    try:
        base = random_workload(args.num_prompts, args.input_len, args.output_len,
                               args.range_ratio, args.vocab_size, seed=args.seed)  # fmt: skip
        # Warm-up: every prompt length of the workload once (new ids), all at once: first-time
        # costs per shape (kernel selection, compilation, graph capture) are not measured.
        server.run(with_fresh_prompts(base, args.seed + 2000, args.vocab_size))
        if trace:
            trace.read(0.0)  # drop the warm-up's steps
        overheads, calibration = {"request_s": 0.0, "step_s": 0.0}, []
        points = []
        for k, rate in enumerate(float(r) for r in args.rates.split(",")):
            each_rate = args.calibrate_each_rate
            if each_rate is None:  # a shared CPU box's load drifts; a GPU box's does not
                each_rate = args.device == "cpu"
            if not args.no_calibrate and (k == 0 or each_rate):
                # Right before the rate: a shared box's load drifts (other work, throttling).
                overheads, calibration = calibrate(server, profile, args, trace, k)
                print(f"overheads: {describe(overheads)}", flush=True)
            # Same lengths and arrival process at every rate, never-seen prompts (no prefix hits).
            requests = with_fresh_prompts(with_arrivals(base, rate, seed=args.seed), args.seed + k,
                                    args.vocab_size)  # fmt: skip
            real, t0 = run_client(server, requests)
            real_summary = summarize(real.timelines, real.duration_s, percentiles=(50, 90))
            s, sim = sim_summary(requests, profile, args, overheads, args.jitter_runs)
            r, real_requests = real_summary.to_dict(), per_request(real.timelines)
            rows = [row(m, stat, r, s) | interval({"real": r, "real_requests": real_requests},
                                                  m, stat)
                    for m in METRICS for stat in ("mean", "p90")]  # fmt: skip
            point = {"rate": rate, "rows": rows, "real": r, "sim": s, "overheads_s": overheads,
                     "calibration_real": calibration,
                     "real_requests": real_requests,
                     "sim_requests": per_request(sim.result.timelines),
                     "sim_steps": sim_steps(sim)}  # fmt: skip
            if trace:
                point["real_trace"] = trace.read(t0)
            points.append(point)
            print(f"\nrate {rate:g} req/s: {r['completed']}/{r['num_requests']} real completed, "
                  f"{s['completed']} sim", flush=True)  # fmt: skip
            print_rows(rows)
            if trace:
                print_breakdown(point, profile)
    finally:
        server.stop()
        for path in glob.glob(trace_prefix + ".*"):
            os.remove(path)
    load_after = os.getloadavg()
    result = {
        "label": label,
        "command": " ".join(sys.argv),
        "args": vars(args),
        "profile": str(profile_path),
        "profile_cost": profile.cost.to_dict(),
        "profile_data": json.loads(profile_path.read_text()),  # samples: --resim refits them
        "overheads_s": overheads,
        "calibration_real": calibration,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "cpu_count": os.cpu_count(),
        "points": points,
    }
    path = out / f"fidelity-{label}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nload average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
          f"({os.cpu_count()} cores); wrote {path}")  # fmt: skip


if __name__ == "__main__":
    main()
