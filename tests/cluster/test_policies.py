"""Routing policies on synthetic snapshots: no processes, no clocks."""

from __future__ import annotations

import math

import pytest

from pdserve.cluster.cost_model import StepCostModel
from pdserve.cluster.policies import (
    POLICIES,
    PolicyConfig,
    RouteDecision,
    add_pending,
    admit,
    make_policy,
)
from pdserve.types import InstanceSnapshot, Request, SamplingParams

PRIOR = StepCostModel(0.01, 1e-5, 0.0, 1e-4, 0.0)  # 10 ms + 10 us per prefill token
CONFIG = PolicyConfig(max_batched_tokens=1000, prior=PRIOR)


def snap(i: int, waiting_tokens=0, running=0, free=1000, total=1000, **kw) -> InstanceSnapshot:
    return InstanceSnapshot(
        f"i{i}",
        num_waiting=int(waiting_tokens > 0),
        num_running=running,
        num_waiting_tokens=waiting_tokens,
        num_running_tokens=running,
        num_free_blocks=free,
        num_total_blocks=total,
        block_size=16,
        **kw,
    )


def request(prompt_len=320, max_tokens=16) -> Request:
    return Request("r", tuple(range(prompt_len)), SamplingParams(max_tokens))


def test_registry_holds_every_policy_by_name():
    assert sorted(POLICIES) == ["least_load", "power_of_two", "prefix", "round_robin", "ttft"]
    with pytest.raises(ValueError, match="unknown routing policy 'nope'"):
        make_policy("nope")


def test_round_robin_cycles_in_order():
    policy = make_policy("round_robin")
    snaps = [snap(0), snap(1), snap(2)]
    assert [policy.route(request(), snaps, 0.0).instance_id for _ in range(4)] == [
        "i0", "i1", "i2", "i0"]  # fmt: skip


def test_least_load_picks_fewest_queued_tokens():
    snaps = [snap(0, waiting_tokens=500), snap(1, waiting_tokens=100), snap(2, waiting_tokens=900)]
    assert make_policy("least_load", CONFIG).route(request(), snaps, 0.0).instance_id == "i1"


def test_least_load_counts_kv_usage():
    snaps = [snap(0, free=100), snap(1, waiting_tokens=100, free=1000)]
    assert make_policy("least_load", CONFIG).route(request(), snaps, 0.0).instance_id == "i1"


def test_power_of_two_is_seeded_and_prefers_less_load():
    snaps = [snap(i, waiting_tokens=100 * i) for i in range(8)]
    runs = [[make_policy("power_of_two", PolicyConfig(seed=7)).route(request(), snaps, 0.0)
             .instance_id for _ in range(1)] for _ in range(2)]  # fmt: skip
    assert runs[0] == runs[1]
    policy = make_policy("power_of_two", PolicyConfig(seed=7))
    picks = [policy.route(request(), snaps, 0.0).instance_id for _ in range(200)]
    assert "i7" not in picks  # the most loaded never wins a pair


def test_prefix_follows_the_longest_cached_prefix():
    snaps = [snap(0), snap(1), snap(2)]
    decision = make_policy("prefix", CONFIG).route(request(), snaps, 0.0, {"i0": 2, "i2": 10})
    assert (decision.instance_id, decision.matched_blocks) == ("i2", 10)


def test_prefix_load_cap_keeps_a_hot_prefix_off_an_overloaded_instance():
    snaps = [snap(0, waiting_tokens=20000), snap(1), snap(2)]
    decision = make_policy("prefix", CONFIG).route(request(), snaps, 0.0, {"i0": 10, "i1": 3})
    assert decision.instance_id == "i1"


def test_ttft_estimates_queue_plus_uncached_prefill():
    snaps = [snap(0, waiting_tokens=2000), snap(1)]
    decision = make_policy("ttft", CONFIG).route(request(320), snaps, 0.0)
    assert decision.instance_id == "i1"
    assert decision.est_ttft_s == pytest.approx(PRIOR.tokens_time(320))


def test_ttft_prefers_a_cache_hit_when_the_queues_match():
    snaps = [snap(0, waiting_tokens=500), snap(1, waiting_tokens=500)]
    decision = make_policy("ttft", CONFIG).route(request(960), snaps, 0.0, {"i1": 40})
    assert (decision.instance_id, decision.matched_blocks) == ("i1", 40)


def test_ttft_vetoes_an_instance_without_room_for_the_kv():
    snaps = [snap(0, free=5), snap(1, waiting_tokens=3000)]
    assert make_policy("ttft", CONFIG).route(request(), snaps, 0.0).instance_id == "i1"


def test_ttft_ties_go_to_less_decode_pressure():
    snaps = [snap(0, free=500), snap(1, free=900)]
    assert make_policy("ttft", CONFIG).route(request(), snaps, 0.0).instance_id == "i1"


def test_ttft_learns_step_times_from_snapshots():
    policy = make_policy("ttft", CONFIG)
    for k, (tokens, secs) in enumerate([(100, 0.11), (500, 0.51), (1000, 1.01)]):
        policy.route(request(), [snap(0, step_tokens=tokens, step_time_s=secs, now_s=k)], 0.0)
    decision = policy.route(request(320), [snap(0, now_s=3)], 0.0)
    assert decision.est_ttft_s == pytest.approx(0.01 + 0.001 * 320)


def test_ttft_instances_of_one_role_and_kind_share_one_step_model():
    """One instance measured slow steps (a warm-up, a noisy box), the other fast ones: as the
    same kind their estimates stay equal, so load decides (here: the tie to less KV usage)."""
    policy = make_policy("ttft", CONFIG)
    steps = {"i0": [(100, 0.11), (500, 0.51)], "i1": [(100, 1.1), (500, 5.1)]}
    for k in range(2):
        for i in range(2):
            tokens, secs = steps[f"i{i}"][k]
            policy.route(request(), [snap(i, step_tokens=tokens, step_time_s=secs, now_s=k)], 0.0)
    # least squares over the four steps: slope 880 / 160000 s per token, through the mean
    b = 880 / 160_000
    a = (0.11 + 0.51 + 1.1 + 5.1) / 4 - b * 300
    decision = policy.route(request(320), [snap(0, free=500, now_s=3), snap(1, now_s=3)], 0.0)
    assert decision.instance_id == "i1"
    assert decision.est_ttft_s == pytest.approx(a + b * 320)
    other_kind = [snap(0, free=500, now_s=4), snap(1, now_s=4, kind="a100")]
    assert policy.route(request(320), other_kind, 0.0).instance_id == "i1"  # the prior, faster


def test_ttft_does_not_relearn_an_idle_instances_last_step_each_heartbeat():
    policy = make_policy("ttft", CONFIG)
    for k, (tokens, secs) in enumerate([(100, 0.11), (500, 0.51)]):
        policy.route(request(), [snap(0, step_tokens=tokens, step_time_s=secs, now_s=k)], 0.0)
    for k in range(2, 200):  # idle: every heartbeat repeats the last step it measured
        policy.route(request(), [snap(0, step_tokens=500, step_time_s=0.51, now_s=k)], 0.0)
    decision = policy.route(request(320), [snap(0, now_s=200)], 0.0)
    assert decision.est_ttft_s == pytest.approx(0.01 + 0.001 * 320)


def test_ttft_extends_a_narrow_fit_with_the_prior_beyond_the_largest_step_measured():
    policy = make_policy("ttft", CONFIG)
    for k, (tokens, secs) in enumerate([(1, 0.0101), (9, 0.0102)]):  # decode steps only
        policy.route(request(), [snap(0, step_tokens=tokens, step_time_s=secs, now_s=k)], 0.0)
    decision = policy.route(request(320), [snap(0, now_s=3)], 0.0)
    fit_at_9 = 0.0101 + 0.0001 / 8 * 8
    assert decision.est_ttft_s == pytest.approx(fit_at_9 + PRIOR.tokens_time(320)
                                                - PRIOR.tokens_time(9))  # fmt: skip


def prefixed(system: int, question: int) -> Request:
    prompt = tuple(1000 * (system + 1) + t for t in range(48)) + (question,)
    return Request(f"r{system}-{question}", prompt, SamplingParams(16))


@pytest.mark.parametrize("name", ["prefix", "ttft"])
def test_new_prefixes_spread_over_an_idle_fleet_by_prefixes_owned(name):
    policy = make_policy(name, CONFIG)
    snaps = [snap(i) for i in range(4)]
    owner: dict[int, str] = {}
    for system in range(12):  # idle fleet: every estimate ties
        owner[system] = policy.route(prefixed(system, 0), snaps, 0.0).instance_id
        # its next requests find it cached where it went
        for q in range(1, 3):
            decision = policy.route(prefixed(system, q), snaps, 0.0, {owner[system]: 3})
            assert decision.instance_id == owner[system]
    assert sorted(list(owner.values()).count(f"i{i}") for i in range(4)) == [3, 3, 3, 3]


def test_ttft_keeps_a_prefix_held_twice_with_its_owner():
    policy = make_policy("ttft", CONFIG)
    snaps = [snap(0), snap(1)]
    policy.route(prefixed(0, 0), [snaps[1]], 0.0)  # placed on i1 (the only instance then)
    decision = policy.route(prefixed(0, 1), snaps, 0.0, {"i0": 3, "i1": 3})
    assert decision.instance_id == "i1"


def test_add_pending_counts_a_routed_request():
    s = add_pending(snap(0, waiting_tokens=10), 300)
    assert (s.num_waiting, s.num_waiting_tokens) == (2, 310)


def test_admission_refuses_only_beyond_slo_and_margin():
    assert admit(RouteDecision("i0", est_ttft_s=0.55), slo_ttft_s=0.5, margin=0.2)
    assert not admit(RouteDecision("i0", est_ttft_s=0.65), slo_ttft_s=0.5, margin=0.2)
    assert admit(RouteDecision("i0", est_ttft_s=math.nan), slo_ttft_s=0.5)
    assert admit(RouteDecision("i0", est_ttft_s=9.0), slo_ttft_s=None)
