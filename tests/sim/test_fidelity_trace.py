"""The fidelity benchmark's reading of a worker step trace ($PDSERVE_STEP_TRACE,
benchmarks/fidelity_trace.py): each step's real time as the simulator times one, and the
calibration measured from it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

from fidelity_trace import matched_requests, real_steps, traced_overheads  # noqa: E402

from pdserve.cluster.cost_model import StepCostModel  # noqa: E402

PREFILL, DECODE = [100, 5050, 0, 0], [0, 0, 1, 101]


def step(t0: float, t1: float, shape: list, in_flight: bool, first: list) -> list:
    """A trace row as `StepTraceReader` keeps it."""
    return [t0, t1, *shape, int(in_flight), first]


def test_sync_steps_run_from_their_call_to_the_next_call_or_to_their_end_when_idle():
    steps = [
        step(0.000, 0.100, PREFILL, False, ["a"]),
        step(0.101, 0.151, DECODE, False, []),  # the loop's 1 ms between calls counts
        step(0.152, 0.202, DECODE, False, []),  # then idle for a second
        step(1.202, 1.302, PREFILL, False, ["b"]),
    ]
    got = [(s.num_prefill_tokens, round(t, 6), start) for s, t, start in real_steps(steps)]
    assert got == [(100, 0.101, 0.0), (0, 0.051, 0.101), (0, 0.05, 0.152), (100, 0.1, 1.202)]


def test_async_steps_run_from_the_collect_before_to_their_own_collect():
    # call 1 launches the prefill after an idle loop (nothing to collect), call 2 launches a
    # decode and collects the prefill (first token), call 3 launches the next and collects.
    steps = [
        step(0.000, 0.013, PREFILL, True, []),
        step(0.0131, 0.020, DECODE, True, ["a"]),
        step(0.0201, 0.027, DECODE, True, []),
        step(0.0271, 0.034, DECODE, False, []),  # the last: ran synchronously (nothing after)
    ]
    got = [(s.num_prefill_tokens, round(t, 6)) for s, t, _ in real_steps(steps)]
    assert got == [(100, 0.02), (0, 0.007), (0, 0.007), (0, 0.0069)]


def _calibration(front_in: float, front_out: float, prefill_s: float, decode_s: float) -> dict:
    t_sub = 1.0 + front_in
    steps = [step(t_sub, t_sub + prefill_s, PREFILL, False, ["r"])]
    t = t_sub + prefill_s
    for _ in range(3):
        steps.append(step(t, t + decode_s, DECODE, False, []))
        t += decode_s
    request = [1.0, 100, None, None, 4, t_sub + prefill_s + front_out, t]
    return {"steps": {"worker-0": steps}, "submits": {"worker-0": [[t_sub, 100, "r"]]},
            "request": request}  # fmt: skip


def test_calibration_measures_the_front_end_and_each_kind_of_step_against_the_model():
    model = StepCostModel(0.010, 1e-4, 0.0, 0.0, 0.0)  # prefill of 100: 20 ms, decode: 10 ms
    calibration = [_calibration(0.002, 0.003, 0.025, 0.009) for _ in range(3)]
    gpu = traced_overheads(calibration, model)
    assert gpu["request_s"] == pytest.approx(0.005)
    assert gpu["prefill_s"] == pytest.approx(0.005) and gpu["decode_s"] == pytest.approx(-0.001)
    assert gpu["scale"] == 1.0 and gpu["pipelined"] is False
    cpu = traced_overheads(calibration, model, scaled=True)
    assert cpu["scale"] == pytest.approx(0.9)  # the median step: a decode at 9 of 10 ms
    assert cpu["decode_s"] == cpu["prefill_s"] == 0.0


def test_a_calibration_group_shares_one_trace_and_each_request_finds_its_own_submit():
    """CPU: one calibration request per instance at a time, each request's record holding the
    whole group's trace; a request is matched to the submit of its own prompt length."""
    model = StepCostModel(0.010, 1e-4, 0.0, 0.0, 0.0)
    a = _calibration(0.002, 0.003, 0.025, 0.009)
    b = _calibration(0.004, 0.006, 0.025, 0.009)  # another worker, a 120-token prompt
    b["steps"] = {"worker-1": b["steps"]["worker-0"]}
    b["submits"] = {"worker-1": [[b["submits"]["worker-0"][0][0], 120, "s"]]}
    b["steps"]["worker-1"][0][-1] = ["s"]
    b["request"][1] = 120
    shared = {"steps": a["steps"] | b["steps"], "submits": a["submits"] | b["submits"]}
    group = [shared | {"request": a["request"]}, shared | {"request": b["request"]}]
    fronts = sorted(t_sub - r[0] + r[5] - t_first for c in group
                    for r, t_sub, t_first in matched_requests(c, [c["request"]]))  # fmt: skip
    assert fronts == pytest.approx([0.005, 0.010])
    assert traced_overheads(group, model)["request_s"] == pytest.approx(0.0075)


def test_calibration_without_traces_is_none():
    assert traced_overheads([{"ttft_s": 0.1, "tpot_s": 0.01}], StepCostModel(0, 0, 0, 0, 0)) is None


def _async_calibration(launch_s: float) -> dict:
    """One request on an async engine: a call launches its prefill (nothing to collect), the
    next launches a decode and collects the prefill (first token), and so on."""
    t_sub = 1.002
    steps = [step(t_sub, t_sub + launch_s, PREFILL, True, [])]
    t = t_sub + launch_s
    for first in (["r"], [], []):
        steps.append(step(t, t + 0.007, DECODE, True, first))
        t += 0.007
    request = [1.0, 100, None, None, 4, t_sub + launch_s + 0.007 + 0.003, t]
    return {"steps": {"worker-0": steps}, "submits": {"worker-0": [[t_sub, 100, "r"]]},
            "request": request}  # fmt: skip


def test_calibration_of_a_split_model_shifts_the_launch_by_the_mean_served_launch():
    from pdserve.sim.profiles import ServedCostModel

    # profile: decode 7 ms on the device, prefill launches of 20 ms on average
    cost = ServedCostModel(0.007, 1e-5, 0.0, 0.0, 0.0, prefill_base_s=-0.006,
                           prefill_floor_s=0.020, pipelined=True, graph_launch_s=5e-4,
                           launch_quantiles_s=(0.015, 0.020, 0.025))  # fmt: skip
    calibration = [_async_calibration(s) for s in (0.022, 0.024, 0.038)]
    got = traced_overheads(calibration, cost)
    assert got["pipelined"] is True
    assert got["prefill_s"] == pytest.approx(0.008)  # mean 28 ms served against 20
    assert got["decode_s"] == pytest.approx(0.0, abs=1e-9)
    assert got["request_s"] == pytest.approx(0.005)
