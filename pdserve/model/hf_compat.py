"""Translation between our ModelConfig / weights and HF transformers' config.json / state dicts."""

from __future__ import annotations

from typing import Any

import torch

from pdserve.config import ModelConfig
from pdserve.model.llama import LlamaForCausalLM, iter_hf_weights

# HF model_type -> our arch; Qwen2 is told apart from Qwen3 by model_type, not by flags.
_ARCHS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "mistral"}


def config_from_hf(hf: dict[str, Any], name: str = "") -> ModelConfig:
    """ModelConfig from config.json (4.x `rope_theta`/`rope_scaling` or 5.x `rope_parameters`)."""
    model_type = hf.get("model_type", "")
    if model_type not in _ARCHS:
        raise ValueError(
            f"unsupported model_type {model_type!r} in {name or 'config'}; "
            f"supported: {sorted(_ARCHS)}"
        )
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    num_heads = hf["num_attention_heads"]
    eos = hf.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
    if model_type == "qwen2":
        attention_bias = True
    else:
        attention_bias = bool(hf.get("attention_bias", False))
    return ModelConfig(
        arch=_ARCHS[model_type],
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope if rope_type != "default" else None,
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=attention_bias,
        qk_norm=model_type == "qwen3",
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=eos_ids,
        name=name,
    )


def to_hf_config(cfg: ModelConfig) -> Any:
    """The transformers config of the same model (for reference runs; imports transformers)."""
    from transformers import AutoConfig

    kwargs: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=list(cfg.eos_token_ids) or None,
    )
    if cfg.rope_scaling:
        kwargs["rope_scaling"] = dict(cfg.rope_scaling)
    if cfg.arch in ("llama", "qwen3"):  # Qwen2 always has q/k/v bias, Mistral never
        kwargs["attention_bias"] = cfg.attention_bias
    if cfg.arch == "mistral":
        kwargs["sliding_window"] = None  # we attend over the whole context
    if cfg.arch in ("qwen2", "qwen3"):
        kwargs["use_sliding_window"] = False
    return AutoConfig.for_model(cfg.arch, **kwargs)


def hf_state_dict(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """Our weights under HF names (q/k/v and gate/up split back), for loading into transformers."""
    state = {name: t.detach().clone() for name, t in iter_hf_weights(model)}
    if model.config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state
