"""GGUF loader on small files written by gguf.GGUFWriter: names, rope row order, dequantizing."""

from __future__ import annotations

import random

import pytest
import torch
from gguf_testing import write_gguf
from model_testing import PagedRunner

from pdserve.model.loader import load_model

PROMPT = [random.Random(0).randrange(512) for _ in range(19)]


def _logits(model) -> torch.Tensor:
    (logits,) = PagedRunner(model, block_size=4).step([(0, PROMPT)])
    return logits


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-qwen2", "tiny-qwen3"])
def test_f32_gguf_reproduces_the_model_exactly(tmp_path, shape):
    original, cfg = load_model(f"dummy:{shape}", torch.float32, "cpu")
    write_gguf(tmp_path / "m.gguf", original, "F32")
    loaded, loaded_cfg = load_model(str(tmp_path / "m.gguf"), torch.float32, "cpu")
    assert loaded_cfg.arch == cfg.arch
    assert (loaded_cfg.attention_bias, loaded_cfg.qk_norm) == (cfg.attention_bias, cfg.qk_norm)
    assert loaded_cfg.tie_word_embeddings == cfg.tie_word_embeddings
    assert (loaded_cfg.eos_token_ids, loaded_cfg.bos_token_id) == ((2,), 1)
    assert torch.equal(_logits(loaded), _logits(original))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "F16", "BF16"])
def test_quantized_gguf_equals_dequantized_reference(tmp_path, qtype):
    original, _ = load_model("dummy:tiny-llama", torch.float32, "cpu")
    expected = write_gguf(tmp_path / "m.gguf", original, qtype)
    loaded, _ = load_model(str(tmp_path / "m.gguf"), torch.float32, "cpu")
    reference, _ = load_model("dummy:tiny-llama", torch.float32, "cpu")
    reference.load_weights(expected.items())
    torch.testing.assert_close(_logits(loaded), _logits(reference), atol=1e-5, rtol=1e-5)


def test_unsupported_tensor_type_is_named(tmp_path):
    original, _ = load_model("dummy:tiny-llama", torch.float32, "cpu")
    write_gguf(tmp_path / "m.gguf", original, "Q5_0")
    message = (
        r"m\.gguf: tensor 'token_embd\.weight' has unsupported GGUF type Q5_0; "
        r"supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1"
    )
    with pytest.raises(ValueError, match=message):
        load_model(str(tmp_path / "m.gguf"), torch.float32, "cpu")
