"""The simulator end to end: determinism, PD hand-off, failures, SLO admission, trace, CLI."""

from __future__ import annotations

import json

import pytest

from pdserve.bench.arrivals import with_arrivals
from pdserve.bench.workload import multi_turn_workload, sharegpt_like_workload
from pdserve.metrics import summarize
from pdserve.sim.cluster import SimConfig
from pdserve.sim.events import ARRIVAL, START, STEP_END, EventLoop, StepStart
from pdserve.sim.network import Network, Topology
from pdserve.sim.profiles import profile_for
from pdserve.sim.run import simulate

PROFILE = profile_for("h100", "qwen3-0.6b")
PROFILES, COSTS = {"": PROFILE}, {"": 2.5}


def workload(n=300, rate=60.0, seed=0):
    return with_arrivals(sharegpt_like_workload(n, seed=seed), rate, seed=seed)


def run(fleet="fused:3", n=300, rate=60.0, **config):
    return simulate(workload(n, rate), fleet, PROFILES, COSTS, SimConfig(**config),
                    slos_s={"ttft": 0.2, "tpot": 0.05})  # fmt: skip


def test_same_seed_same_results():
    a, b = run(routing="power_of_two"), run(routing="power_of_two")
    assert a.summary == b.summary
    assert [t.token_times_s for t in a.result.timelines] == [
        t.token_times_s for t in b.result.timelines]  # fmt: skip


def test_every_request_completes_with_its_output_length():
    requests = workload()
    result = run().result
    assert all(t.is_success for t in result.timelines)
    assert [t.num_output_tokens for t in result.timelines] == [r.output_len for r in requests]
    for inst in result.instances:
        inst.scheduler.check_integrity()


def test_failure_retries_requests_without_a_first_token():
    sim = run(
        "fused:2", n=200, rate=100.0, failures=((0.5, "fused-0", 1.0),), routing="round_robin"
    )
    errors = dict(sim.summary.errors)
    assert sim.summary.completed + sum(errors.values()) == 200
    assert set(errors) <= {"instance fused-0 failed"}
    assert sim.summary.completed > 150  # the unstarted ones were retried on fused-1


def test_slo_admission_refuses_under_overload_only():
    idle = run(n=20, rate=1.0, slo_ttft_s=0.05)
    assert idle.summary.failed == 0
    flood = run("fused:1", n=400, rate=float("inf"), slo_ttft_s=0.05)
    assert dict(flood.summary.errors).get("429: the TTFT SLO cannot be met", 0) > 100


def test_multi_turn_sends_a_turn_after_the_previous_one_ends():
    requests = multi_turn_workload(4, 3, 32, 8, seed=0)
    sim = simulate(requests, "fused:2", PROFILES, COSTS, SimConfig(routing="prefix"))
    by_id = dict(zip([r.request_id for r in requests], sim.result.timelines))
    for s in range(4):
        for turn in (1, 2):
            prev, cur = by_id[f"session{s}-turn{turn - 1}"], by_id[f"session{s}-turn{turn}"]
            assert cur.send_s == prev.end_s
    hits = sum(i.scheduler.stats.prefix_hits for i in sim.result.instances)
    assert hits > 0  # later turns reuse the previous turn's prompt


def test_events_at_one_time_fire_arrivals_then_step_ends_then_starts():
    fired = []

    class Probe:
        def on_step_start(self, instance, now):
            fired.append(instance)

    loop = EventLoop()
    loop.push(1.0, StepStart("late"))
    loop.push(0.5, StepStart("early"))
    loop.run(Probe())
    assert fired == ["early", "late"] and ARRIVAL < STEP_END < START


def test_network_serializes_transfers_from_one_sender():
    net = Network(Topology(gpus_per_host=2))
    _, done1 = net.transfer(0, 1, 450e9, 0.0)  # NVLink within the host: 1 s
    start2, done2 = net.transfer(0, 2, 50e9, 0.0)  # RDMA to the next host, queued behind it
    assert done1 == pytest.approx(1.0, rel=1e-3)
    assert start2 == done1 and done2 == pytest.approx(2.0, rel=1e-3)


def test_sim_cli_prints_the_bench_table_and_writes_a_trace(tmp_path, capsys):
    from pdserve.cli import main

    trace = tmp_path / "trace.json"
    rc = main(["sim", "--num-prompts", "40", "--request-rate", "20", "--fleet",
               "prefill:1,decode:1", "--model-shape", "qwen3-0.6b", "--goodput", "ttft:500",
               "--trace-out", str(trace)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "requests completed / failed" in out and "40 / 0" in out
    assert json.loads(trace.read_text())["traceEvents"]


def test_summary_matches_metrics_summarize():
    sim = run(n=50)
    assert sim.summary == summarize(sim.result.timelines, sim.result.duration_s,
                                    {"ttft": 0.2, "tpot": 0.05}, gpu_cost_per_hour=2.5,
                                    num_gpus=3)  # fmt: skip
