"""HF folder loader: what transformers' save_pretrained writes loads back to the same model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from model_testing import PagedRunner, hf_twin

from pdserve.model.loader import load_model, resolve_model_spec

PROMPT = [3, 141, 59, 265, 35, 89, 79, 323, 84, 62, 64, 33]


def _logits(model) -> torch.Tensor:
    (logits,) = PagedRunner(model, block_size=4).step([(0, PROMPT)])
    return logits


@pytest.mark.parametrize("shape", ["tiny-llama3", "tiny-qwen2", "tiny-qwen3", "tiny-mistral"])
def test_saved_folder_loads_identical_model(tmp_path, shape):
    original, cfg = load_model(f"dummy:{shape}", torch.float32, "cpu")
    hf_twin(original).save_pretrained(tmp_path)
    loaded, loaded_cfg = load_model(str(tmp_path), torch.float32, "cpu")
    assert dataclasses.replace(loaded_cfg, name=cfg.name) == cfg
    assert torch.equal(_logits(loaded), _logits(original))


def test_sharded_folder_loads_identical_model(tmp_path):
    original, _ = load_model("dummy:tiny-llama", torch.float32, "cpu")
    hf_twin(original).save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    assert resolve_model_spec(str(tmp_path)).kind == "hf"
    loaded, _ = load_model(str(tmp_path), torch.float32, "cpu")
    assert torch.equal(_logits(loaded), _logits(original))


def test_bfloat16_load_keeps_float32_rope_table(tmp_path):
    original, _ = load_model("dummy:tiny-qwen3", torch.float32, "cpu")
    hf_twin(original).save_pretrained(tmp_path)
    loaded, _ = load_model(str(tmp_path), torch.bfloat16, "cpu")
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert loaded.cos_sin.dtype == torch.float32
    logits = _logits(loaded)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, _logits(original), atol=0.05, rtol=0.05)
