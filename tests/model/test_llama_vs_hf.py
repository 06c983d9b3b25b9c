"""Our model equals HF transformers on the same random weights (float32, CPU)."""

from __future__ import annotations

import random

import pytest
import torch
from model_testing import PagedRunner, greedy_generate, hf_greedy, hf_logits, hf_twin

from pdserve.model.hf_compat import to_hf_config
from pdserve.model.loader import build_model, load_model
from pdserve.model.shapes import SHAPES

TINY_SHAPES = ["tiny-llama", "tiny-llama3", "tiny-qwen2", "tiny-qwen3", "tiny-mistral"]


def _prompts(vocab_size: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(n)] for n in lengths]


@pytest.fixture(scope="module", params=TINY_SHAPES)
def models(request):
    model, _ = load_model(f"dummy:{request.param}", torch.float32, "cpu")
    return model, hf_twin(model)


def test_prefill_logits_equal_hf(models):
    model, hf = models
    (prompt,) = _prompts(model.config.vocab_size, [21])
    (ours,) = PagedRunner(model, block_size=4).step([(0, prompt)])
    torch.testing.assert_close(ours, hf_logits(hf, prompt), atol=1e-5, rtol=1e-4)


def test_batched_greedy_equals_hf_generate(models):
    model, hf = models
    prompts = _prompts(model.config.vocab_size, [7, 13, 1], seed=1)
    ours = greedy_generate(model, prompts, max_new_tokens=8, block_size=4)
    assert ours == [hf_greedy(hf, p, 8) for p in prompts]


def test_chunked_prefill_equals_hf_generate(models):
    model, hf = models
    prompts = _prompts(model.config.vocab_size, [11, 6], seed=2)
    ours = greedy_generate(model, prompts, max_new_tokens=6, block_size=3, prefill_chunk=4)
    assert ours == [hf_greedy(hf, p, 6) for p in prompts]


def test_positions_past_original_context_use_llama3_scaled_rope():
    """tiny-llama3's original_max_position_embeddings is 64; 150 positions cross it."""
    model, _ = load_model("dummy:tiny-llama3", torch.float32, "cpu")
    (prompt,) = _prompts(model.config.vocab_size, [150], seed=3)
    (ours,) = PagedRunner(model, block_size=16).step([(0, prompt)])
    torch.testing.assert_close(ours, hf_logits(hf_twin(model), prompt), atol=1e-5, rtol=1e-4)


def test_cos_sin_table_equals_hf_rotary_embedding():
    model, _ = load_model("dummy:tiny-llama3", torch.float32, "cpu")
    hf = hf_twin(model)
    half = model.config.head_dim // 2
    positions = torch.arange(model.config.max_position_embeddings)[None]
    cos, sin = hf.model.rotary_emb(torch.zeros(1), positions)  # [1, P, D] each
    assert torch.equal(model.cos_sin[:, :half], cos[0, :, :half])
    assert torch.equal(model.cos_sin[:, half:], sin[0, :, :half])


@pytest.mark.parametrize("shape", ["llama-3.1-8b", "qwen3-0.6b", "smollm2-135m"])
def test_real_shapes_have_hf_parameter_shapes(shape):
    """Built on the meta device: no memory, exact parameter names and shapes of the HF model."""
    from transformers import AutoModelForCausalLM

    from pdserve.model.llama import iter_hf_weights

    ours = build_model(SHAPES[shape], torch.bfloat16, torch.device("meta"))
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(to_hf_config(SHAPES[shape]))
    expected = {n: tuple(p.shape) for n, p in hf.named_parameters()}
    assert {n: tuple(t.shape) for n, t in iter_hf_weights(ours)} == expected
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())


def test_load_weights_rejects_unknown_and_missing_names():
    model, _ = load_model("dummy:tiny-llama", torch.float32, "cpu")
    with pytest.raises(ValueError, match="unexpected weight 'model.layers.0.foo.weight'"):
        model.load_weights([("model.layers.0.foo.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="weights missing from checkpoint"):
        model.load_weights([("model.norm.weight", torch.ones(64))])
