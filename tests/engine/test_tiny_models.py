"""Tiny random Llama, Qwen2, Qwen3 and Mistral models through the engine, against HF transformers
on the same float32 weights; and batch invariance of greedy outputs."""

import random

import pytest
import torch

from pdserve.model.hf_compat import hf_state_dict, to_hf_config
from pdserve.types import SamplingParams

transformers = pytest.importorskip("transformers")

SHAPES = ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-mistral"]


def random_prompts(n, seed=0, lo=3, hi=60, vocab=500):
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def hf_greedy(llm, prompts, max_new_tokens):
    hf = transformers.AutoModelForCausalLM.from_config(
        to_hf_config(llm.engine.model_config), dtype=torch.float32
    )
    hf.load_state_dict(hf_state_dict(llm.engine.core.executor.model))
    hf.eval()
    outs = []
    for p in prompts:
        ids = torch.tensor([p])
        g = hf.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        outs.append(g[0, len(p) :].tolist())
    return outs


GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_equals_hf_transformers(make_llm, shape):
    llm = make_llm(f"dummy:{shape}", dtype="float32", block_size=4, max_num_batched_tokens=64)
    prompts = random_prompts(6)
    ours = [o.token_ids for o in llm.generate(prompts, GREEDY)]
    assert ours == hf_greedy(llm, prompts, 12)


@pytest.fixture(scope="module")
def reference():
    from pdserve.engine.llm import LLM

    llm = LLM("dummy:tiny-qwen3", dtype="float32", block_size=4, num_blocks=512)
    prompts = random_prompts(16, seed=1, lo=1, hi=90)
    alone = [llm.generate([p], GREEDY)[0].token_ids for p in prompts]
    return prompts, alone


def test_batch_of_16_equals_each_alone(make_llm, reference):
    prompts, alone = reference
    llm = make_llm("dummy:tiny-qwen3", dtype="float32", block_size=4)
    assert [o.token_ids for o in llm.generate(prompts, GREEDY)] == alone


@pytest.mark.parametrize("budget", [1, 5, 17])
def test_chunked_prefill_equals_unchunked(make_llm, reference, budget):
    prompts, alone = reference
    llm = make_llm("dummy:tiny-qwen3", dtype="float32", block_size=4, max_num_batched_tokens=budget)
    assert [o.token_ids for o in llm.generate(prompts, GREEDY)] == alone


def test_prefix_hit_gives_same_tokens(make_llm, reference):
    prompts, alone = reference
    llm = make_llm("dummy:tiny-qwen3", dtype="float32", block_size=4)
    llm.generate(prompts, GREEDY)
    hits_before = llm.core.scheduler.stats.prefix_hits
    assert [o.token_ids for o in llm.generate(prompts, GREEDY)] == alone
    assert llm.core.scheduler.stats.prefix_hits > hits_before


def test_preempted_and_resumed_gives_same_tokens(make_llm, reference):
    prompts, alone = reference
    llm = make_llm("dummy:tiny-qwen3", dtype="float32", block_size=4, num_blocks=40)
    assert [o.token_ids for o in llm.generate(prompts, GREEDY)] == alone
    assert llm.core.scheduler.stats.num_preemptions > 0


def test_seeded_sampling_is_reproducible_across_batches(make_llm):
    llm = make_llm("dummy:tiny-llama", dtype="float32", block_size=4)
    prompts = random_prompts(8, seed=2)
    seeded = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=1234)
    alone = llm.generate([prompts[3]], seeded)[0].token_ids
    mixed = [SamplingParams(max_tokens=7, temperature=0.7)] * 8
    mixed[3] = seeded
    assert llm.generate(prompts, mixed)[3].token_ids == alone
    # and with a tiny pool that forces preemption
    small = make_llm("dummy:tiny-llama", dtype="float32", block_size=4, num_blocks=24)
    assert small.generate(prompts, mixed)[3].token_ids == alone
