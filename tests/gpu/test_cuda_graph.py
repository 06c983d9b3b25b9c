"""Decode CUDA graphs: replaying a captured graph gives what the eager forward gives."""

import random

import pytest
import torch

from pdserve.engine.cuda_graph import capture_sizes
from pdserve.engine.llm import LLM
from pdserve.types import SamplingParams

pytestmark = pytest.mark.gpu


def random_prompts(n, seed=0, lo=3, hi=300, vocab=500):
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def record_logits(llm):
    """Keep a copy of every logits tensor the runner samples from, in step order."""
    runner = llm.core.executor
    sample = runner._sample
    seen = []

    def recording(logits, seqs, result):
        seen.append(logits.detach().float().cpu().clone())
        sample(logits, seqs, result)

    runner._sample = recording
    return seen


def test_capture_sizes_cover_every_batch_up_to_the_max():
    assert capture_sizes(256)[:6] == [1, 2, 4, 8, 16, 32]
    assert capture_sizes(256)[-1] == 256
    assert capture_sizes(40) == [1, 2, 4, 8, 16, 32, 40]


@pytest.mark.parametrize("num_prompts", [1, 5, 37])
def test_graph_replay_equals_eager(num_prompts):
    # Synchronous steps: the logits are recorded on the host-side sampling path.
    kwargs = dict(dtype="float32", num_blocks=2048, max_num_seqs=64, max_model_len=512,
                  async_scheduling=False)  # fmt: skip
    graphs = LLM("dummy:tiny-llama3", **kwargs)
    eager = LLM("dummy:tiny-llama3", enforce_eager=True, **kwargs)
    assert graphs.core.executor.graphs is not None
    assert eager.core.executor.graphs is None
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    prompts = random_prompts(num_prompts)
    logits_graph, logits_eager = record_logits(graphs), record_logits(eager)
    out_graph = [o.token_ids for o in graphs.generate(prompts, params)]
    out_eager = [o.token_ids for o in eager.generate(prompts, params)]
    assert out_graph == out_eager
    assert len(logits_graph) == len(logits_eager)
    for a, b in zip(logits_graph, logits_eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_graph_replay_samples_seeded_requests_like_eager():
    kwargs = dict(dtype="float32", num_blocks=1024, max_num_seqs=16, max_model_len=512)
    params = SamplingParams(max_tokens=16, temperature=0.8, top_p=0.9, seed=7, ignore_eos=True)
    prompts = random_prompts(3, seed=3)
    out = [
        [o.token_ids for o in LLM("dummy:tiny-qwen3", **kwargs, **e).generate(prompts, params)]
        for e in ({}, {"enforce_eager": True})
    ]
    assert out[0] == out[1]


@pytest.mark.parametrize("num_blocks", [2048, 48])  # 48 blocks of 16: preemption
def test_async_scheduling_equals_sync_on_the_gpu(num_blocks):
    """Graphs, pending tokens fed on the device, stops mid-batch; greedy and seeded."""
    kwargs = dict(dtype="float32", num_blocks=num_blocks, max_num_seqs=64, max_model_len=512)
    ahead = LLM("dummy:tiny-llama3", async_scheduling=True, **kwargs)
    sync = LLM("dummy:tiny-llama3", async_scheduling=False, **kwargs)
    prompts = random_prompts(40, seed=5, hi=120)
    params = [
        SamplingParams(max_tokens=8 + i % 30, temperature=0, ignore_eos=True,
                       stop_token_ids=(7, 11, 13)) if i % 3 else
        SamplingParams(max_tokens=20, temperature=0.9, seed=i, ignore_eos=True)
        for i in range(40)
    ]  # fmt: skip
    want = [o.token_ids for o in sync.generate(prompts, params)]
    got = [o.token_ids for o in ahead.generate(prompts, params)]
    assert got == want
    if num_blocks == 48:
        assert ahead.core.scheduler.stats.num_preemptions > 0
    pool = ahead.core.scheduler.kv.pool
    assert pool.num_free_blocks == pool.num_blocks
