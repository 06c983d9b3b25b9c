import json
import math
import random
import statistics

import pytest

from pdserve.bench.arrivals import arrival_offsets, with_arrivals
from pdserve.bench.text import ids_to_text
from pdserve.bench.trace import trace_workload
from pdserve.bench.workload import (
    SHAREGPT_MEAN_INPUT,
    SHAREGPT_MEAN_OUTPUT,
    multi_turn_workload,
    random_workload,
    shared_prefix_workload,
    sharegpt_like_workload,
    w1_nano_workload,
    w1_workload,
)


def test_same_seed_gives_identical_workloads_and_other_seed_differs():
    for make in (
        lambda seed: random_workload(20, 64, 16, 0.5, 1000, seed),
        lambda seed: sharegpt_like_workload(20, 1000, seed),
        lambda seed: shared_prefix_workload(2, 3, 16, 8, 4, 1000, seed),
        lambda seed: multi_turn_workload(2, 3, 8, 4, 1000, seed),
    ):
        assert make(1) == make(1)
        assert make(1) != make(2)


def test_random_lengths_fixed_or_within_the_range():
    fixed = random_workload(10, 50, 7, vocab_size=100)
    assert {r.prompt_len for r in fixed} == {50} and {r.output_len for r in fixed} == {7}
    ranged = random_workload(500, 100, 100, 0.5, 100)
    assert all(50 <= r.prompt_len <= 150 and 50 <= r.output_len <= 150 for r in ranged)
    assert statistics.mean(r.prompt_len for r in ranged) == pytest.approx(100, rel=0.05)
    assert all(10 <= t < 100 for r in ranged for t in r.prompt_token_ids)


def test_sharegpt_like_lengths_have_the_target_means_and_a_heavy_tail():
    reqs = sharegpt_like_workload(4000, 1000, seed=0)
    ins = [r.prompt_len for r in reqs]
    outs = [r.output_len for r in reqs]
    assert statistics.mean(ins) == pytest.approx(SHAREGPT_MEAN_INPUT, rel=0.05)
    assert statistics.mean(outs) == pytest.approx(SHAREGPT_MEAN_OUTPUT, rel=0.05)
    assert statistics.median(ins) < 0.75 * statistics.mean(ins)  # right-skewed
    assert max(ins) >= 900 and min(ins) >= 4


def test_shared_prefix_prompts_share_their_group_prefix():
    reqs = shared_prefix_workload(3, 4, 32, 8, 5, 1000, seed=0)
    assert len(reqs) == 12 and all(r.prompt_len == 40 for r in reqs)
    groups = {}
    for r in reqs:
        groups.setdefault(r.request_id.split("-")[1], []).append(r.prompt_token_ids)
    prefixes = {g: {p[:32] for p in ps} for g, ps in groups.items()}
    assert all(len(p) == 1 for p in prefixes.values())
    assert len({next(iter(p)) for p in prefixes.values()}) == 3
    assert len({p[32:] for ps in groups.values() for p in ps}) == 12


def test_multi_turn_prompt_extends_the_previous_turn():
    reqs = multi_turn_workload(2, 3, user_turn_len=8, output_len=5, vocab_size=1000)
    by_key = {(r.session_id, r.turn): r for r in reqs}
    for s in range(2):
        for t in (1, 2):
            prev, cur = by_key[(s, t - 1)], by_key[(s, t)]
            assert cur.prompt_token_ids[: prev.prompt_len] == prev.prompt_token_ids
            assert cur.prompt_len == prev.prompt_len + 5 + 8
    assert [r.turn for r in reqs] == [0, 0, 1, 1, 2, 2]


def test_w1_equals_the_reference_generator():
    rng = random.Random(0)
    ref = [[rng.randint(10, 30000) for _ in range(rng.randint(100, 1024))] for _ in range(256)]
    w1 = w1_workload()
    assert [list(r.prompt_token_ids) for r in w1] == ref
    assert {r.output_len for r in w1} == {256} and all(r.ignore_eos for r in w1)
    assert sum(r.prompt_len for r in w1) == 140918


def test_w1_nano_has_w1_prompts_and_ranged_outputs():
    nano, w1 = w1_nano_workload(), w1_workload()
    assert [r.prompt_token_ids for r in nano] == [r.prompt_token_ids for r in w1]
    assert all(100 <= r.output_len <= 1024 for r in nano)
    assert len({r.output_len for r in nano}) > 100


def test_poisson_arrivals_have_the_rate_and_inf_sends_all_at_once():
    assert arrival_offsets(5, math.inf) == [0.0] * 5
    t = arrival_offsets(4000, 10.0, 1.0, seed=0)
    assert t[0] == 0.0 and t == sorted(t)
    assert len(t) / t[-1] == pytest.approx(10.0, rel=0.05)


def test_burstiness_keeps_the_rate_and_changes_the_spread():
    def gap_cv(b):
        t = arrival_offsets(4000, 10.0, b, seed=0)
        gaps = [y - x for x, y in zip(t, t[1:])]
        return len(t) / t[-1], statistics.stdev(gaps) / statistics.mean(gaps)

    rate_bursty, cv_bursty = gap_cv(0.25)
    rate_regular, cv_regular = gap_cv(4.0)
    assert rate_bursty == pytest.approx(10.0, rel=0.1) and rate_regular == pytest.approx(
        10, rel=0.1
    )
    assert cv_bursty == pytest.approx(2.0, rel=0.15) and cv_regular == pytest.approx(0.5, rel=0.15)


def test_with_arrivals_is_seeded():
    reqs = random_workload(10, 4, 4, vocab_size=100)
    assert with_arrivals(reqs, 5.0, seed=3) == with_arrivals(reqs, 5.0, seed=3)
    with pytest.raises(ValueError, match="request_rate"):
        with_arrivals(reqs, 0.0)


def test_trace_replay_arrivals_lengths_and_shared_hash_blocks(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [
        {"timestamp": 1000, "input_length": 6, "output_length": 3, "hash_ids": [1, 2]},
        {"timestamp": 1500, "input_length": 5, "output_length": 2, "hash_ids": [1, 3]},
        {"timestamp": 3000, "input_length": 4, "output_length": 1},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    reqs = trace_workload(path, vocab_size=1000, block_size=4)
    assert [r.arrival_s for r in reqs] == [0.0, 0.5, 2.0]
    assert [(r.prompt_len, r.output_len) for r in reqs] == [(6, 3), (5, 2), (4, 1)]
    assert reqs[0].prompt_token_ids[:4] == reqs[1].prompt_token_ids[:4]
    assert reqs[0].prompt_token_ids[4:] != reqs[1].prompt_token_ids[4:5]
    assert trace_workload(path, num_prompts=2, time_scale=2.0)[1].arrival_s == 0.25


def test_trace_bad_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 3}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        trace_workload(path)


def test_text_prompt_has_one_word_per_token_id():
    text = ids_to_text([0, 1, 2, 300])
    assert len(text.split()) == 4 and text == ids_to_text([0, 1, 2, 300])


def test_fresh_prompts_keep_lengths_and_arrivals_with_new_ids():
    from dataclasses import replace

    from pdserve.bench.workload import with_fresh_prompts

    base = [replace(r, arrival_s=0.5 * i) for i, r in enumerate(random_workload(5, 20, 4))]
    fresh = with_fresh_prompts(base, seed=3, vocab_size=100)
    assert [(r.prompt_len, r.output_len, r.arrival_s) for r in fresh] == [
        (r.prompt_len, r.output_len, r.arrival_s) for r in base
    ]
    assert [r.request_id for r in fresh] == [f"{r.request_id}-s3" for r in base]
    assert all(10 <= t < 100 for r in fresh for t in r.prompt_token_ids)
    assert all(f.prompt_token_ids != b.prompt_token_ids for f, b in zip(fresh, base))
    assert with_fresh_prompts(base, seed=3, vocab_size=100) == fresh
    assert [r.request_id for r in with_fresh_prompts(base, 3, 100, tag="w")][0].endswith("-w")
