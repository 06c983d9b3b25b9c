"""PD disaggregation in the simulator: the controller's hand-off on the schedulers' PD states
(RECEIVE reserves on the decode side, SEND keeps the prefill side's blocks until the KV landed),
the pairing of `cluster.pd_policy.choose_pd`, chunk-by-chunk transfers, and lost instances."""

from __future__ import annotations

import pytest

from pdserve.bench.arrivals import with_arrivals
from pdserve.bench.workload import BenchRequest, sharegpt_like_workload
from pdserve.sim.cluster import SimConfig
from pdserve.sim.network import Topology
from pdserve.sim.profiles import profile_for
from pdserve.sim.run import simulate

PROFILE = profile_for("h100", "qwen3-0.6b")
PROFILES, COSTS = {"": PROFILE}, {"": 2.5}


def workload(n=300, rate=60.0, seed=0):
    return with_arrivals(sharegpt_like_workload(n, seed=seed), rate, seed=seed)


def run(fleet, requests=None, **config):
    requests = workload() if requests is None else requests
    return simulate(requests, fleet, PROFILES, COSTS, SimConfig(**config))


def by_id(sim):
    return {i.instance_id: i for i in sim.result.instances}


def assert_all_blocks_back(sim):
    """Nothing held: no request, reservation or KV waiting to be sent, every block allocatable."""
    for inst in sim.result.instances:
        sched = inst.scheduler
        assert (sched.requests, sched.receiving, sched.sending) == ({}, {}, {}), inst.instance_id
        assert sched.kv.num_free_blocks == sched.kv.num_blocks, inst.instance_id
        sched.check_integrity()


def test_always_prefills_on_the_prefill_side_and_decodes_without_computing_the_prompt():
    requests = workload()
    sim = run("prefill:1,decode:2", requests, pd_disaggregation="always", trace=True)
    assert sim.summary.completed == 300
    assert [t.num_output_tokens for t in sim.result.timelines] == [r.output_len for r in requests]
    inst = by_id(sim)
    assert inst["prefill-0"].scheduler.stats.generation_tokens == 300  # the first tokens
    decode_pids = {inst["decode-1"].index, inst["decode-2"].index}
    decode_steps = [e for e in sim.result.trace if e["pid"] in decode_pids and e.get("tid") == 0
                    and e["name"].startswith("step ")]  # fmt: skip
    assert decode_steps and all(e["args"]["prefill_tokens"] == 0 for e in decode_steps)
    # Every prompt token's KV crossed once (no shared prefixes in this workload).
    sent = sum(e["args"]["bytes"] for e in sim.result.trace if e["name"].startswith("kv "))
    assert sent == sum(r.prompt_len for r in requests) * PROFILE.kv_bytes_per_token
    assert_all_blocks_back(sim)


def test_the_first_token_comes_from_the_prefill_side_and_decoding_starts_when_the_kv_lands():
    """One prompt of three chunks over a slow link: each chunk's KV leaves as its step ends
    (queued behind the one before); the first token is the prefill's; the decode side's first
    step starts when the last chunk has landed."""
    budget = PROFILE.max_num_batched_tokens
    req = BenchRequest("long", tuple(range(100, 100 + 3 * budget)), 4, arrival_s=0.0)
    topology = Topology(gpus_per_host=1, inter_host="tcp")  # 10 GB/s, 100 us
    sim = run("prefill:1,decode:1", [req], pd_disaggregation="always", trace=True,
              topology=topology)  # fmt: skip
    trace = sim.result.trace
    prefill_steps = [e for e in trace if e["pid"] == 0 and e["name"].startswith("step ")]
    transfers = [e for e in trace if e["name"].startswith("kv ")]
    decode_steps = [
        e for e in trace if e["pid"] == 1 and e["name"].startswith("step ") and e["args"]["seqs"]
    ]  # (its first step only reserved blocks: empty)
    assert [e["args"]["prefill_tokens"] for e in prefill_steps] == [budget] * 3
    chunk_s = budget * PROFILE.kv_bytes_per_token / 10e9 + 100e-6
    starts = [e["ts"] for e in transfers]
    ends = [p["ts"] + p["dur"] for p in prefill_steps]
    assert starts[0] == pytest.approx(ends[0])
    for k in (1, 2):  # after its own step, or behind the chunk before it
        assert starts[k] == pytest.approx(max(ends[k], starts[k - 1] + chunk_s * 1e6))
    landed = transfers[-1]["ts"] + transfers[-1]["dur"]
    tl = sim.result.timelines[0]
    assert tl.token_times_s[0] * 1e6 == pytest.approx(ends[-1])  # TTFT: the prefill's token
    assert decode_steps[0]["ts"] == pytest.approx(landed)
    assert tl.num_output_tokens == 4 and len(decode_steps) == 3
    assert_all_blocks_back(sim)


def test_mode_never_runs_everything_fused_on_the_decode_side_and_cost_splits():
    never = run("prefill:1,decode:1", pd_disaggregation="never")
    assert never.summary.completed == 300
    assert by_id(never)["prefill-0"].num_steps == 0
    cost = run("prefill:1,decode:1", pd_disaggregation="cost")
    assert cost.summary.completed == 300
    num_disaggregated = by_id(cost)["prefill-0"].scheduler.stats.generation_tokens
    assert 0 < num_disaggregated < 300  # idle decode side: fused; busy: the pair
    assert_all_blocks_back(never)
    assert_all_blocks_back(cost)


def test_a_lost_prefill_instance_leaves_its_hand_offs_to_the_decode_side():
    """Prompts being prefilled or sent when prefill-0 dies are computed on the decode side;
    every request still gets exactly its output length (a delivered first token not twice)."""
    requests = workload(rate=200.0)
    clean = run("prefill:2,decode:1", requests, pd_disaggregation="always", trace=True)
    steps = [e for e in clean.result.trace if e["pid"] == 0 and e["name"].startswith("step ")]
    mid_step_s = (steps[20]["ts"] + steps[20]["dur"] / 2) / 1e6  # a prefill in flight
    sim = run("prefill:2,decode:1", requests, pd_disaggregation="always", trace=True,
              failures=((mid_step_s, "prefill-0", 100.0),))  # fmt: skip
    assert sim.summary.completed == 300
    assert [t.num_output_tokens for t in sim.result.timelines] == [r.output_len for r in requests]
    decode_pid = by_id(sim)["decode-2"].index
    decode_steps = [e for e in sim.result.trace if e["pid"] == decode_pid
                    and e["name"].startswith("step ")]  # fmt: skip
    assert any(e["args"]["prefill_tokens"] > 0 for e in decode_steps)  # the recomputed prompts
    for inst in sim.result.instances:
        if inst.is_alive:
            assert inst.scheduler.sending == {} and inst.scheduler.receiving == {}


def test_a_lost_decode_instance_frees_the_prefill_side_and_retries_unstarted_requests():
    requests = workload(rate=200.0)
    sim = run("prefill:1,decode:2", requests, pd_disaggregation="always",
              failures=((0.3, "decode-1", 100.0),))  # fmt: skip
    errors = dict(sim.summary.errors)
    assert set(errors) == {"instance decode-1 failed"}
    assert sim.summary.completed + errors["instance decode-1 failed"] == 300
    prefill = by_id(sim)["prefill-0"].scheduler
    assert (prefill.requests, prefill.sending) == ({}, {})
    assert prefill.kv.num_free_blocks == prefill.kv.num_blocks
