"""A worker's step trace (`$PDSERVE_STEP_TRACE`, read by bench_sim_fidelity.py's
`StepTraceReader`) against the simulator's cost model: each step's real time as the simulator
times one, the requests matched to their submits, where a run's time went, and the calibration
measured from the traced calibration requests."""

from __future__ import annotations

import math
import statistics


def median_or_nan(xs) -> float:
    """The median of the values that are not None (nan when none are)."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else math.nan


IDLE_S = 0.005  # a worker loop that spent longer than this between step() calls was idle


def real_steps(steps: list) -> list[tuple]:
    """(shape, seconds, start) of each traced step as the sim times one: from when the engine
    could start it to when its tokens were out, the worker loop's time between steps included.
    Sync (not in flight): from its step() call to the next call, or to its end when the loop
    then idled. Async (its step() launched it, the next one collected it): from the collect of
    the plan before (or its launch, after an idle loop) to its own collect."""
    from pdserve.cluster.cost_model import StepShape

    out = []
    for i, st in enumerate(steps):
        t0, t1, in_flight = st[0], st[1], st[6]
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        if in_flight:
            if nxt is None:
                continue
            after_idle = i == 0 or not steps[i - 1][6] or t0 - steps[i - 1][1] > IDLE_S
            start, end = (t0 if after_idle else t1), nxt[1]
        else:
            start = t0
            end = nxt[0] if nxt is not None and nxt[0] - t1 <= IDLE_S else t1
        out.append((StepShape(*st[2:6]), end - start, start))
    return out


def matched_requests(trace: dict, requests: list) -> list[tuple]:
    """(client request row, worker submit time, time its first token left the worker) of each
    request, client rows and worker submits matched in send order: each row takes the first
    submit not yet taken with its prompt length (a trace may hold more submits than `requests`:
    a calibration group's)."""
    first_end = {}
    for steps in trace["steps"].values():
        for st in steps:
            for rid in st[7]:
                first_end[rid] = st[1]
    subs = sorted((t, n, rid) for w in trace["submits"].values() for t, n, rid in w)
    out = []
    for r in sorted(requests, key=lambda r: r[0]):
        k = next((k for k, (_, n, _) in enumerate(subs) if n == r[1]), None)
        if k is None:
            continue
        t_sub, _, rid = subs.pop(k)
        if r[5] is not None and rid in first_end:
            out.append((r, t_sub, first_end[rid]))
    return out


def breakdown(point: dict, cost) -> dict:
    """Where the real run's time went, from the worker step trace, against the cost model:
    decode-only and prefill steps' real time (`real_steps`) and real minus the model's time;
    the worker loop's time between busy step() calls; front_in / front_out: client send ->
    worker submit (waiting for a running step included), worker first token -> client;
    engine: worker submit -> first token out of the worker. Medians, ms."""
    out: dict[str, list] = {"decode_step": [], "prefill_step": [], "decode_model": [],
                            "prefill_model": [], "gap": [], "front_in": [], "front_out": [],
                            "engine": []}  # fmt: skip
    trace = point["real_trace"]
    for steps in trace["steps"].values():
        for shape, real_s, _ in real_steps(steps):
            kind = "prefill" if shape.num_prefill_tokens else "decode"
            out[f"{kind}_step"].append(real_s)
            out[f"{kind}_model"].append(real_s - cost.step_time(shape))
        out["gap"] += [b[0] - a[1] for a, b in zip(steps, steps[1:]) if b[0] - a[1] <= IDLE_S]
    for r, t_sub, t_first in matched_requests(trace, point["real_requests"]):
        out["front_in"].append(t_sub - r[0])
        out["front_out"].append(r[5] - t_first)
        out["engine"].append(t_first - t_sub)
    launches = prefill_launches(trace)
    return {k: median_or_nan(v) * 1e3 for k, v in out.items()} | {
        "num_decode_steps": len(out["decode_step"]),
        "num_prefill_steps": len(out["prefill_step"]),
        "num_matched_requests": len(out["engine"]),
        "prefill_launch": {"mean": statistics.fmean(launches) * 1e3 if launches else math.nan,
                           "p50": median_or_nan(launches) * 1e3,
                           "p90": _percentile(launches, 90) * 1e3, "n": len(launches)},
    }  # fmt: skip


def prefill_launches(trace: dict) -> list[float]:
    """The host time of launching each step that prefills, under async scheduling (seconds):
    the step timer's `launch_s` when traced, else the step() call that launched it (its launch
    plus the wait for the step before, which has long finished when the launch is the longer).
    This is what a served prefill costs the host (the interval between two collects around it
    says ~2 ms: the decode step before it absorbed its launch)."""
    out = []
    for steps in trace["steps"].values():
        for st in steps:
            if st[2] and st[6]:
                out.append(st[8] if len(st) > 8 and st[8] is not None else st[1] - st[0])
    return out


def _percentile(xs, p: float) -> float:
    from pdserve.metrics import percentile

    return percentile(xs, p) if xs else math.nan


def traced_overheads(calibration: list[dict], cost, scaled: bool = False) -> dict | None:
    """From the calibration requests' traces (one request at a time, so nothing queues):

        request_s = front end in + front end out    (client -> worker, worker -> client)
        pipelined = the engine launched steps while others ran (async scheduling)
    and either (`scaled`, a CPU engine: its steps run on a core other work shares, all slower
    or faster by the same factor)
        scale     = real / model, every step
    or (a GPU engine: its steps differ from the profile's synchronous ones by host work, hidden
    behind the device or added by the worker loop, the same for every step of a kind)
        decode_s  = real - model, decode-only steps
        prefill_s = real - model, steps that prefill

    measured, not inferred from TTFT and TPOT residuals (which put any step-time error of the
    prefill on the front end, where the simulator delays the request instead of the step).
    Medians; None without traces. A split model (`fit_split`: its prefill floor is the mean
    host launch, the launches' spread is jitter) on an async engine instead gets

        prefill_s = mean served launch - the profile's mean launch   (`prefill_launches`)

    the mean: what shifts a jittered quantity's mean (the median of real - model compares a
    jittered launch with a constant and lands below the mean shift)."""
    front, steps, pipelined = [], [], False
    for c in calibration:
        if "steps" not in c:
            return None
        pipelined |= any(st[6] for w in c["steps"].values() for st in w)
        for worker_steps in c["steps"].values():
            steps += [(shape, real_s, cost.step_time(shape))
                      for shape, real_s, _ in real_steps(worker_steps)]  # fmt: skip
        for r, t_sub, t_first in matched_requests(c, [c["request"]]):
            front.append((t_sub - r[0]) + (r[5] - t_first))
    decode = [real - model for s, real, model in steps if not s.num_prefill_tokens]
    prefill = [real - model for s, real, model in steps if s.num_prefill_tokens]
    if not front or not decode or not prefill:
        return None
    if scaled:
        scale = statistics.median(real / model for _, real, model in steps)
        return {"request_s": statistics.median(front), "step_s": 0.0, "scale": scale,
                "decode_s": 0.0, "prefill_s": 0.0, "pipelined": pipelined}  # fmt: skip
    prefill_s = statistics.median(prefill)
    launches = [t for c in calibration for t in prefill_launches(c)]
    if pipelined and launches and getattr(cost, "launch_quantiles_s", ()):
        prefill_s = statistics.fmean(launches) - cost.prefill_floor_s
    return {"request_s": statistics.median(front), "step_s": 0.0, "scale": 1.0,
            "decode_s": statistics.median(decode), "prefill_s": prefill_s,
            "pipelined": pipelined}  # fmt: skip
