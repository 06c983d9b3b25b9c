"""PD pairing and conditional disaggregation (cluster/pd_policy.py) on synthetic snapshots and
cost models: which decode, which prefill, and whether to hand off at all."""

from __future__ import annotations

import math

import pytest

from pdserve.cluster.cost_model import Link, estimate_ttft_s
from pdserve.cluster.pd_policy import Candidate, choose_pd, pick_decode, plan_pull
from pdserve.types import InstanceSnapshot

BS = 16
BUDGET = 2048
BLOCK_BYTES = 1_000_000  # 1 MB of KV per block (all layers)
FAST = Link(10e9, 1e-3)  # 10 GB/s, 1 ms


def snap(instance_id: str, free: int = 1000, total: int = 1000, **kw) -> InstanceSnapshot:
    return InstanceSnapshot(instance_id, num_free_blocks=free, num_total_blocks=total,
                            block_size=BS, **kw)  # fmt: skip


def linear(base_s: float, per_token_s: float):
    return lambda num_tokens: base_s + per_token_s * num_tokens


DEFAULT_STEP = linear(0.01, 1e-4)


def cand(instance_id: str, step=DEFAULT_STEP, cached: int = 0, **kw) -> Candidate:
    return Candidate(snap(instance_id, **kw), step, cached)


def choose(prompt_len, prefills, decodes, link=lambda p, d: FAST, mode="cost", max_tokens=16):
    return choose_pd(prompt_len, max_tokens, prefills, decodes, BLOCK_BYTES, link, BUDGET, mode)


def test_decode_with_the_most_kv_headroom_wins():
    decodes = [cand("d0", free=100), cand("d1", free=900), cand("d2", free=500)]
    assert pick_decode(decodes, prompt_len=64, max_tokens=16) == 1


def test_decode_running_load_breaks_equal_headroom():
    decodes = [cand("d0", num_running=40), cand("d1", num_running=3)]
    assert pick_decode(decodes, prompt_len=64, max_tokens=16) == 1


def test_decode_without_room_for_the_request_is_skipped_while_another_has_room():
    # d0 is idle but cannot hold 2000 tokens (125 blocks); d1 is busy with room to spare
    decodes = [cand("d0", free=100, num_running=0), cand("d1", free=400, num_running=200)]
    assert pick_decode(decodes, prompt_len=1984, max_tokens=16) == 1


def test_decode_prefix_hit_counts_as_headroom():
    # both have 20 free blocks; the prompt needs 20 + 1, d1 holds 8 of its blocks cached
    decodes = [cand("d0", free=20), cand("d1", free=20, cached=8)]
    assert pick_decode(decodes, prompt_len=320, max_tokens=16) == 1


def test_prefill_chosen_by_ttft_plus_transfer_over_its_link():
    # p0 computes faster, but its link to the decode is slow: 20 blocks x 1 MB at 0.1 GB/s
    # = 200 ms; p1 is 1 ms + 2 ms of transfer over 10 GB/s
    prefills = [cand("p0", step=linear(0.01, 1e-5)), cand("p1", step=linear(0.01, 1e-4))]
    decodes = [cand("d0", step=linear(0.5, 1e-3), num_running=100)]
    links = {("p0", "d0"): Link(0.1e9, 0.0), ("p1", "d0"): FAST}
    choice = choose(320, prefills, decodes, link=lambda p, d: links[(p, d)])
    ttft_p1 = 0.01 + 1e-4 * 320
    assert choice.prefill_id == "p1"
    assert choice.transfer_s == pytest.approx(1e-3 + 20 * BLOCK_BYTES / 10e9)
    assert choice.est_pair_s == pytest.approx(ttft_p1 + choice.transfer_s)
    assert choice.num_transfer_blocks == 20


def test_busy_decode_hands_the_prefill_off():
    # 120 running decode seqs in every step of the decode instance, 0.5 ms per token there
    decodes = [cand("d0", step=linear(0.01, 5e-4), num_running=120)]
    prefills = [cand("p0", step=linear(0.01, 5e-4))]
    choice = choose(512, prefills, decodes)
    fused = estimate_ttft_s(decodes[0].snap, 512, decodes[0].step_time, BUDGET)
    assert choice.est_fused_s == pytest.approx(fused)
    assert choice.est_fused_s > choice.est_pair_s
    assert (choice.decode_id, choice.prefill_id) == ("d0", "p0")


def test_idle_decode_prefills_itself_when_the_transfer_costs_more_than_it_saves():
    same = linear(0.01, 5e-4)
    choice = choose(512, [cand("p0", step=same)], [cand("d0", step=same)])
    assert choice.prefill_id is None
    assert choice.est_ttft_s == choice.est_fused_s
    assert choice.est_pair_s == pytest.approx(choice.est_fused_s + choice.transfer_s)


def test_short_uncached_part_stays_on_decode_long_one_is_handed_off():
    # decode instance: 5 running seqs, small steps but 4x slower per prefill token than the
    # prefill instance, whose steps cost more to start (20 ms vs 10 ms)
    decodes = [cand("d0", step=linear(0.01, 4e-4), num_running=5)]
    prefills = [cand("p0", step=linear(0.02, 1e-4))]
    short, long = choose(16, prefills, decodes), choose(1024, prefills, decodes)
    assert short.prefill_id is None  # 18.4 ms here vs 21.6 + 1.1 ms
    assert short.est_fused_s == pytest.approx(0.01 + 4e-4 * (5 + 16))
    assert long.prefill_id == "p0"  # 421.6 ms here vs 122.4 + 7.4 ms


def test_decode_side_prefix_hit_shrinks_both_its_prefill_and_the_transfer():
    decodes = [cand("d0", step=linear(0.01, 4e-4), num_running=30, cached=60)]
    prefills = [cand("p0", step=linear(0.02, 1e-4))]
    choice = choose(1024, prefills, decodes)  # only 64 of 1024 tokens uncached on decode
    assert choice.num_transfer_blocks == 4
    assert choice.prefill_id is None


def test_modes_force_either_way():
    decodes = [cand("d0", step=linear(0.01, 5e-4), num_running=120)]
    prefills = [cand("p0")]
    assert choose(512, prefills, decodes, mode="never").prefill_id is None
    idle = [cand("d0")]
    assert choose(16, prefills, idle, mode="cost").prefill_id is None
    assert choose(16, prefills, idle, mode="always").prefill_id == "p0"


def test_no_prefill_instance_runs_fused():
    choice = choose(512, [], [cand("d0")], mode="always")
    assert choice.prefill_id is None and math.isinf(choice.est_pair_s)
    assert choice.reason == "no live prefill instance"


def test_prefill_without_room_is_skipped_while_another_has_room():
    prefills = [cand("p0", free=3, step=linear(0.001, 1e-6)), cand("p1", free=500)]
    assert choose(320, prefills, [cand("d0")], mode="always").prefill_id == "p1"


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown disaggregation mode 'sometimes'"):
        choose(16, [], [cand("d0")], mode="sometimes")


# ---- remote prefix pull -----------------------------------------------------------------------


def pull(prompt_len, matched, link=FAST, per_token_s=1e-4, overhead_s=0.0, mode="cost"):
    """Target "t" with a linear step model (10 ms + per_token_s per prompt token)."""
    holders = [i for i in matched if i != "t"]
    return plan_pull(prompt_len, BS, "t", matched, holders, BLOCK_BYTES, lambda h, t: link,
                     linear(0.01, per_token_s), overhead_s, mode)  # fmt: skip


def test_pull_chosen_when_moving_the_blocks_is_faster_than_computing_them():
    # 30 blocks (480 tokens) at 1 ms/token = 480 ms to compute; 30 MB at 10 GB/s + 1 ms = 4 ms
    plan = pull(500, {"h": 30}, per_token_s=1e-3)
    assert (plan.holder_id, plan.num_cached_blocks, plan.num_blocks) == ("h", 0, 30)
    assert plan.pull_s == pytest.approx(1e-3 + 30 * BLOCK_BYTES / 10e9)
    assert plan.recompute_s == pytest.approx(480 * 1e-3)
    assert plan.is_pull


def test_pull_refused_when_the_link_is_slower_than_recomputing():
    # the same 30 blocks over 0.1 GB/s: 300 ms of transfer vs 48 ms of compute at 0.1 ms/token
    plan = pull(500, {"h": 30}, link=Link(0.1e9, 1e-3), per_token_s=1e-4)
    assert plan.recompute_s == pytest.approx(0.048)
    assert plan.pull_s == pytest.approx(0.301)
    assert not plan.is_pull


def test_pull_refused_when_its_fixed_overhead_exceeds_the_saving():
    plan = pull(40, {"h": 2}, per_token_s=1e-4, overhead_s=0.005)  # saves 3.2 ms, costs 6.2 ms
    assert not plan.is_pull
    assert pull(40, {"h": 2}, per_token_s=1e-4, overhead_s=0.005, mode="always").is_pull


def test_pull_moves_only_the_blocks_the_target_lacks():
    plan = pull(500, {"t": 10, "h": 30}, per_token_s=1e-3)
    assert (plan.num_cached_blocks, plan.num_blocks, plan.num_pull_blocks) == (10, 30, 20)
    assert plan.recompute_s == pytest.approx(320 * 1e-3)
    assert plan.pull_s == pytest.approx(1e-3 + 20 * BLOCK_BYTES / 10e9)


def test_no_pull_when_no_other_instance_holds_more():
    assert pull(500, {"t": 30, "h": 30}) is None
    assert pull(500, {"t": 5}) is None


def test_pull_never_takes_the_prompts_last_token():
    # a 64-token prompt: the last token is computed, so 3 of its 4 blocks can be pulled
    plan = pull(64, {"h": 4}, per_token_s=1e-3)
    assert plan.num_blocks == 3


def test_pull_prefers_the_holder_with_the_largest_saving():
    links = {"near": FAST, "far": Link(0.1e9, 1e-3)}
    holders = {"t": 0, "far": 30, "near": 25}
    plan = plan_pull(500, BS, "t", holders, ["far", "near"], BLOCK_BYTES,
                     lambda h, t: links[h], linear(0.01, 1e-3))  # fmt: skip
    # far: 480 ms saved - 301 ms of transfer; near: 400 ms saved - 3.5 ms
    assert plan.holder_id == "near" and plan.is_pull


def test_busy_decode_never_takes_a_prefill_that_breaks_its_tbt_budget():
    """Same cost models and an idle prefill instance behind a slow link: prefilling on the decode
    instance wins on TTFT, but with 8 requests decoding there a step carrying 512 prompt tokens
    takes 0.01 + 1e-4 x 520 = 62 ms, over a 50 ms TBT budget, so the prompt is handed off; an
    idle decode instance (nobody to stall) or a 100 ms budget keeps it local."""
    slow = lambda p, d: Link(0.1e9, 5e-3)  # noqa: E731  (0.1 GB/s: 32 blocks take 320 ms)
    prefills = [cand("p0")]
    busy = [cand("d0", num_running=8)]
    args = (512, 16, prefills)

    def pick(decodes, budget_s):
        return choose_pd(*args, decodes, BLOCK_BYTES, slow, BUDGET, "cost", budget_s)

    handed_off = pick(busy, 0.050)
    assert handed_off.prefill_id == "p0"
    assert handed_off.est_fused_s < handed_off.est_pair_s  # TTFT alone would keep it local
    assert "TBT budget 50.00 ms" in handed_off.reason
    assert pick(busy, 0.100).prefill_id is None
    assert pick([cand("d0")], 0.050).prefill_id is None
    assert pick(busy, math.inf).prefill_id is None
