import dataclasses
import random

import pytest

from pdserve.config import SchedulerConfig
from pdserve.sched.scheduler import Scheduler
from pdserve.types import FinishReason, Request, SamplingParams
from tests.sched.fake_executor import FakeExecutor

BLOCK = 4


def make(num_blocks=64, **cfg) -> tuple[Scheduler, FakeExecutor]:
    config = SchedulerConfig(**{"max_num_batched_tokens": 64, "max_model_len": 512, **cfg})
    return Scheduler(config, num_blocks, BLOCK), FakeExecutor(num_blocks, BLOCK)


def req(rid, prompt, max_tokens=8, **kw) -> Request:
    return Request(
        rid, tuple(prompt), SamplingParams(max_tokens=max_tokens, **kw), eos_token_ids=()
    )


def run(sched: Scheduler, ex: FakeExecutor, requests, max_steps=10_000):
    """Drive schedule -> execute -> update to the end, checking integrity after every step."""
    for r in requests:
        sched.add_request(r)
    outputs = {r.request_id: [] for r in requests}
    reasons = {}
    for now in range(max_steps):
        if not sched.has_unfinished:
            break
        plan = sched.schedule(now)
        for event in sched.update(plan, ex.execute(plan), now):
            outputs[event.request_id].extend(event.new_token_ids)
            if event.finish_reason:
                reasons[event.request_id] = event.finish_reason
        sched.check_integrity()
    assert not sched.has_unfinished
    pool = sched.kv.pool
    assert all(r == 0 for r in pool.ref_cnts), "blocks still held after every request ended"
    assert pool.num_free_blocks == pool.num_blocks
    return outputs, reasons


def prompts(n, seed=0, lo=1, hi=40):
    rng = random.Random(seed)
    return [[rng.randrange(1000) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def test_batched_outputs_equal_single_runs():
    ps = prompts(16)
    alone = {}
    for i, p in enumerate(ps):
        out, _ = run(*make(), [req(f"r{i}", p)])
        alone.update(out)
    batched, reasons = run(*make(), [req(f"r{i}", p) for i, p in enumerate(ps)])
    assert batched == alone
    assert set(reasons.values()) == {FinishReason.LENGTH}
    assert all(len(v) == 8 for v in batched.values())


@pytest.mark.parametrize("budget", [1, 3, 7, 64])
def test_chunked_prefill_at_any_budget_gives_same_outputs(budget):
    ps = prompts(6, seed=1)
    reference, _ = run(*make(), [req(f"r{i}", p) for i, p in enumerate(ps)])
    chunked, _ = run(
        *make(max_num_batched_tokens=budget), [req(f"r{i}", p) for i, p in enumerate(ps)]
    )
    assert chunked == reference


def test_budget_and_max_num_seqs_are_respected():
    sched, ex = make(max_num_batched_tokens=10, max_num_seqs=3)
    run(sched, ex, [req(f"r{i}", p) for i, p in enumerate(prompts(8, seed=2))])
    for plan in ex.plans:
        assert plan.num_batched_tokens == sum(s.num_new_tokens for s in plan.seqs) <= 10
        assert len(plan.seqs) <= 3


def test_preemption_by_recompute_keeps_outputs():
    ps = prompts(8, seed=3, lo=10, hi=20)
    reference, _ = run(*make(), [req(f"r{i}", p, max_tokens=16) for i, p in enumerate(ps)])
    sched, ex = make(num_blocks=12)  # 48 token slots for 8 requests of up to 36 tokens
    tight, _ = run(sched, ex, [req(f"r{i}", p, max_tokens=16) for i, p in enumerate(ps)])
    assert sched.stats.num_preemptions > 0
    assert any(plan.preempted_ids for plan in ex.plans)
    assert tight == reference


def test_shared_prefix_computes_only_uncached_tokens():
    shared = list(range(100, 100 + 3 * BLOCK))
    sched, ex = make()
    run(sched, ex, [req("a", shared + [1, 2], max_tokens=2)])
    ex.plans.clear()
    run(sched, ex, [req("b", shared + [7, 8, 9], max_tokens=2)])
    first = ex.plans[0].summary()
    assert first == (("b", 3 * BLOCK, 3),)  # 12 cached tokens skipped, 3 computed
    assert sched.stats.prefix_hits == 3 * BLOCK
    assert sched.stats.prefix_queries == len(shared) + 2 + len(shared) + 3


def test_fully_cached_prompt_still_computes_its_last_token():
    prompt = list(range(2 * BLOCK))
    sched, ex = make()
    out_a, _ = run(sched, ex, [req("a", prompt, max_tokens=3)])
    ex.plans.clear()
    out_b, _ = run(sched, ex, [req("b", prompt, max_tokens=3)])
    assert ex.plans[0].summary() == (("b", BLOCK, BLOCK),)
    assert out_a["a"] == out_b["b"]


def test_priority_policy_admits_lower_priority_value_first():
    sched, ex = make(max_num_seqs=1, policy="priority")
    requests = [
        Request("low", (1, 2), SamplingParams(max_tokens=1), priority=5),
        Request("high", (3, 4), SamplingParams(max_tokens=1), priority=0),
    ]
    run(sched, ex, requests)
    assert [p.seqs[0].request_id for p in ex.plans if p.seqs] == ["high", "low"]


def test_stop_token_and_eos():
    sched, ex = make()
    probe, _ = run(sched, ex, [req("p", [5, 6, 7], max_tokens=4)])
    second = probe["p"][1]
    eos = Request("e", (5, 6, 7), SamplingParams(max_tokens=4), eos_token_ids=(second,))
    stop = req("s", [5, 6, 7], max_tokens=4, stop_token_ids=(second,))
    out, reasons = run(*make(), [eos, stop])
    assert out["s"] == out["e"] == probe["p"][:2]
    assert reasons["s"] == reasons["e"] == FinishReason.STOP


def test_ignore_eos_and_min_tokens_run_to_max_tokens():
    sched, ex = make()
    probe, _ = run(sched, ex, [req("p", [5, 6, 7], max_tokens=4)])
    first = probe["p"][0]
    sched, ex = make()
    r = Request(
        "i", (5, 6, 7), SamplingParams(max_tokens=4, ignore_eos=True), eos_token_ids=(first,)
    )
    out, reasons = run(sched, ex, [r])
    assert out["i"] == probe["p"] and reasons["i"] == FinishReason.LENGTH


def test_abort_frees_blocks_at_once():
    sched, ex = make()
    sched.add_request(req("a", list(range(30)), max_tokens=50))
    sched.update(plan := sched.schedule(0), ex.execute(plan), 0)
    assert sched.kv.num_blocks_held("a") > 0
    assert sched.abort("a")
    assert sched.kv.pool.num_free_blocks == sched.kv.num_blocks
    sched.check_integrity()
    assert sched.schedule(1).finished_ids == ("a",)


def test_max_tokens_zero_finishes_after_prefill_without_tokens():
    sched, ex = make()
    out, reasons = run(sched, ex, [req("z", [1, 2, 3], max_tokens=0)])
    assert out["z"] == [] and reasons["z"] == FinishReason.LENGTH


@pytest.mark.parametrize(
    ("prompt_len", "max_tokens", "message"),
    [
        (0, 1, "at least one token"),
        (600, 1, "the prompt has 600 tokens but the model's context is 512 tokens"),
        (500, 20, "500 tokens and max_tokens is 20: 520 tokens exceed the model's context of 512"),
    ],
)
def test_impossible_requests_are_refused(prompt_len, max_tokens, message):
    sched, _ = make()
    with pytest.raises(ValueError, match=message):
        sched.add_request(req("x", [1] * prompt_len, max_tokens=max_tokens))
    assert not sched.has_unfinished


def test_prompt_over_the_step_budget_is_refused_without_chunked_prefill():
    sched, ex = make(max_num_batched_tokens=16, enable_chunked_prefill=False)
    message = "20 tokens but a step computes at most 16 .* chunked prefill is off"
    with pytest.raises(ValueError, match=message):
        sched.add_request(req("x", [1] * 20, max_tokens=1))
    assert not sched.has_unfinished
    outputs, _ = run(sched, ex, [req("y", [1] * 16, max_tokens=2)])  # one whole step fits
    assert len(outputs["y"]) == 2


def test_request_larger_than_the_pool_is_refused():
    sched, _ = make(num_blocks=4)
    with pytest.raises(ValueError, match="needs 5 KV blocks .* holds only 4 blocks"):
        sched.add_request(req("x", [1] * 17, max_tokens=1))


def test_snapshot_counts_queue_and_blocks():
    sched, ex = make(max_num_seqs=1)
    sched.add_request(req("a", [1] * 10))
    sched.add_request(req("b", [2] * 6))
    sched.update(plan := sched.schedule(0), ex.execute(plan), 0)
    snap = sched.snapshot("i0", now=1.0)
    assert (snap.num_running, snap.num_waiting, snap.num_waiting_tokens) == (1, 1, 6)
    assert snap.num_running_tokens == 1
    assert snap.num_free_blocks == 64 - 3


def test_precomputed_block_hashes_are_taken_as_given():
    from pdserve.hashing import hash_blocks

    prompt = list(range(50, 50 + 3 * BLOCK + 1))
    hashes = tuple(hash_blocks(prompt, BLOCK))
    sched, _ = make()
    sched.add_request(
        Request("a", tuple(prompt), SamplingParams(max_tokens=1), block_hashes=hashes)
    )
    sched.add_request(req("b", prompt, max_tokens=1))
    assert sched.requests["a"].block_hashes == sched.requests["b"].block_hashes == list(hashes)


def test_a_replaced_config_governs_the_next_step():
    sched, _ = make(max_num_seqs=4)
    for i in range(3):
        sched.add_request(req(f"r{i}", range(10 * i, 10 * i + 6)))
    sched.config = dataclasses.replace(sched.config, max_num_seqs=1, max_num_batched_tokens=5)
    plan = sched.schedule(0.0)
    assert [(s.request_id, s.num_new_tokens) for s in plan.seqs] == [("r0", 5)]
    assert plan.num_batched_tokens == 5 and sched.config.max_num_seqs == 1
