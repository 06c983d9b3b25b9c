"""Async scheduling (step N+1 planned and launched before step N's tokens are applied) gives the
same tokens as synchronous stepping, on the CPU runner, through every path that touches it:
stops, length limits, preemption, aborts, and the requests that force a synchronous step.
(Greedy or per-request seeds: unseeded sampling shares one generator across the batch, so it
depends on the batch's composition in either mode.)"""

import random

import pytest
import torch

from pdserve.types import SamplingParams

MODEL = "dummy:tiny-llama3"


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randint(10, 250) for _ in range(rng.randint(3, 40))] for _ in range(n)]


def token_ids(llm, prompt_list, params):
    return [out.token_ids for out in llm.generate(prompt_list, params)]


def count_pending_feeds(llm) -> list[int]:
    """Count decode tokens the runner took from the previous step's device output."""
    runner = llm.core.executor
    prepare = runner.prepare
    fed = [0]

    def counting_prepare(plan, pad_to=0, pad_tokens=0):
        fed[0] += sum(1 for s in plan.seqs if s.num_computed_tokens >= len(s.request.token_ids))
        return prepare(plan, pad_to, pad_tokens)

    runner.prepare = counting_prepare
    return fed


def test_greedy_equals_sync_with_stops_and_lengths(make_llm):
    ps = prompts(12)
    sync = make_llm(MODEL, async_scheduling=False)
    ahead = make_llm(MODEL, async_scheduling=True)
    lengths = [
        SamplingParams(max_tokens=1 + 3 * i, ignore_eos=True, temperature=0.0) for i in range(12)
    ]
    expected = token_ids(sync, ps, lengths)
    fed = count_pending_feeds(ahead)
    assert token_ids(ahead, ps, lengths) == expected
    assert fed[0] > 0  # decode tokens really came from the running step
    assert ahead.core.executor._last_index  # the last launched step sampled

    # Stop tokens that the greedy outputs hit part-way: requests end early, mid-batch.
    stop_ids = tuple({ids[len(ids) // 2] for ids in expected if len(ids) > 4})
    stopped = [
        SamplingParams(max_tokens=40, stop_token_ids=stop_ids, ignore_eos=True, temperature=0)
    ] * 12
    expected = token_ids(sync, ps, stopped)
    assert any(len(ids) < 40 for ids in expected)
    assert token_ids(ahead, ps, stopped) == expected


def test_preemption_under_a_small_pool(make_llm):
    ps = prompts(16, seed=1)
    params = SamplingParams(max_tokens=48, ignore_eos=True, temperature=0.0)
    sync = make_llm(MODEL, async_scheduling=False, num_blocks=40, block_size=4)
    ahead = make_llm(MODEL, async_scheduling=True, num_blocks=40, block_size=4)
    expected = token_ids(sync, ps, params)
    assert token_ids(ahead, ps, params) == expected
    assert ahead.core.scheduler.stats.num_preemptions > 0


def test_seeded_sampling_does_not_depend_on_preemption(make_llm):
    ps = prompts(16, seed=6)
    params = [
        SamplingParams(max_tokens=40, ignore_eos=True, temperature=1.0, seed=i) for i in range(16)
    ]
    roomy = make_llm(MODEL, num_blocks=512, block_size=4)
    tight = make_llm(MODEL, num_blocks=40, block_size=4)
    ahead = make_llm(MODEL, num_blocks=40, block_size=4, async_scheduling=True)
    expected = token_ids(roomy, ps, params)
    assert token_ids(tight, ps, params) == expected
    assert token_ids(ahead, ps, params) == expected
    assert tight.core.scheduler.stats.num_preemptions > 0
    assert ahead.core.scheduler.stats.num_preemptions > 0


def test_host_side_sampling_forces_sync_steps_with_same_outputs(make_llm):
    """Logprobs, penalties, min_tokens, prompt logprobs and seeded sampling in one batch."""
    ps = prompts(8, seed=2)
    params = [
        SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.0),
        SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.0, logprobs=2),
        SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.0, repetition_penalty=1.3),
        SamplingParams(max_tokens=12, temperature=0.0, min_tokens=6, stop_token_ids=(7, 8, 9)),
        SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.0, prompt_logprobs=1),
        SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.8, seed=5),
        SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.9, top_k=20, seed=6),
        SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.0, frequency_penalty=0.5),
    ]
    sync = make_llm(MODEL, async_scheduling=False)
    ahead = make_llm(MODEL, async_scheduling=True)
    want = sync.generate(ps, params)
    got = ahead.generate(ps, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    assert [o.logprobs for o in got] == [o.logprobs for o in want]
    assert [o.prompt_logprobs for o in got] == [o.prompt_logprobs for o in want]

    # Seeded sampling alone runs ahead and still draws the same tokens.
    fed = count_pending_feeds(ahead)
    seeded = [
        SamplingParams(max_tokens=16, ignore_eos=True, temperature=1.0, seed=i) for i in range(8)
    ]
    assert token_ids(ahead, ps, seeded) == token_ids(sync, ps, seeded)
    assert fed[0] > 0


def test_abort_while_a_step_is_in_flight_frees_blocks_after_it(make_llm):
    llm = make_llm(MODEL, async_scheduling=True, num_blocks=64, block_size=4)
    core = llm.core
    sched = core.scheduler
    ps = prompts(4, seed=3)
    params = SamplingParams(max_tokens=30, ignore_eos=True, temperature=0.0)
    for p in ps:
        llm._submit(p, params)
    ids = list(sched.requests)
    while not core._in_flight or not all(sched.requests[i].num_output_tokens for i in ids):
        core.step()
    victim = sched.requests[ids[0]]
    assert victim.num_pending == 1  # its next token is being computed
    held = sched.kv.num_blocks_held(victim.request_id)
    assert held > 0
    free_before = sched.kv.num_free_blocks
    assert core.abort(victim.request_id)
    # The running step still writes the victim's blocks: they are freed only after it.
    assert sched.kv.num_blocks_held(victim.request_id) == held
    assert sched.kv.num_free_blocks == free_before
    core.step()
    assert sched.kv.num_blocks_held(victim.request_id) == 0
    while core.has_unfinished:
        core.step()
    core.check_integrity()


@pytest.mark.parametrize("flag", ["on", "off", "auto"])
def test_cli_flag(flag):
    import argparse

    from pdserve.engine.cli import add_engine_arguments, engine_kwargs
    from pdserve.engine.factory import build_engine
    from pdserve.engine.llm import make_engine_config

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    args = parser.parse_args(["--model", MODEL, "--async-scheduling", flag, "--num-blocks", "16"])
    config = make_engine_config(args.model, **engine_kwargs(args))
    assert config.async_scheduling is {"on": True, "off": False, "auto": None}[flag]
    engine = build_engine(config)
    assert engine.core.async_scheduling is (flag == "on")  # auto: off on the CPU


def test_kernel_warm_up_writes_no_kv_and_leaves_outputs_unchanged(make_llm):
    llm = make_llm(MODEL, async_scheduling=False, num_blocks=64, block_size=4)
    ps = prompts(3, seed=4)
    params = SamplingParams(max_tokens=8, ignore_eos=True, temperature=0.0)
    before = token_ids(llm, ps, params)
    kv = llm.core.executor.kv_cache.clone()
    llm.core.executor.warm_up_kernels(max_model_len=300)
    assert torch.equal(llm.core.executor.kv_cache, kv)
    assert token_ids(llm, ps, params) == before


def test_eager_steps_padded_to_a_token_bucket_give_the_same_tokens(make_llm):
    """A GPU pads each eager step's rows to a multiple of `token_bucket` (one padding seq whose
    slots are -1): the same greedy tokens as unpadded steps, with prefill chunks, prefix hits
    and decode batches; every padded step really is a multiple of the bucket."""
    ps = prompts(10, seed=3)
    ps += [ps[0] + [17, 18, 19] * 10]  # a prefix hit on ps[0]'s blocks
    params = SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.0)
    plain = make_llm(MODEL, max_num_batched_tokens=64, block_size=4)
    padded = make_llm(MODEL, max_num_batched_tokens=64, block_size=4)
    runner = padded.core.executor
    runner.token_bucket = 16
    prepare, rows = runner.prepare, []

    def recording_prepare(plan, pad_to=0, pad_tokens=0):
        inputs = prepare(plan, pad_to, pad_tokens)
        rows.append((plan.num_batched_tokens, pad_tokens, inputs.input_ids.shape[0]))
        return inputs

    runner.prepare = recording_prepare
    assert token_ids(padded, ps, params) == token_ids(plain, ps, params)
    assert any(pad for _, pad, _ in rows)
    for num_tokens, pad, num_rows in rows:
        assert num_rows == num_tokens + pad
        assert num_rows % 16 == 0 or num_rows == 64  # capped at the staging buffers
    assert padded.core.scheduler.stats.prefix_hits > 0
