"""Named model shapes for `dummy:<shape>` specs: real models' exact shapes and tiny test shapes."""

from __future__ import annotations

from pdserve.config import ModelConfig

_LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

_TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    max_position_embeddings=512,
)

SHAPES: dict[str, ModelConfig] = {
    "llama-3.1-8b": ModelConfig(
        arch="llama",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=_LLAMA31_ROPE,
        max_position_embeddings=131072,
        bos_token_id=128000,
        eos_token_ids=(128001, 128008, 128009),
        name="dummy:llama-3.1-8b",
    ),
    "qwen3-0.6b": ModelConfig(
        arch="qwen3",
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=40960,
        tie_word_embeddings=True,
        qk_norm=True,
        eos_token_ids=(151645, 151643),
        name="dummy:qwen3-0.6b",
    ),
    "smollm2-135m": ModelConfig(
        arch="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_ids=(2,),
        name="dummy:smollm2-135m",
    ),
    "tiny-llama": ModelConfig(arch="llama", name="dummy:tiny-llama", **_TINY),
    "tiny-llama3": ModelConfig(
        arch="llama",
        name="dummy:tiny-llama3",
        rope_theta=500000.0,
        rope_scaling={**_LLAMA31_ROPE, "original_max_position_embeddings": 64},
        **_TINY,
    ),
    "tiny-qwen2": ModelConfig(
        arch="qwen2",
        name="dummy:tiny-qwen2",
        attention_bias=True,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        **_TINY,
    ),
    "tiny-qwen3": ModelConfig(
        arch="qwen3",
        name="dummy:tiny-qwen3",
        qk_norm=True,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        **{**_TINY, "head_dim": 32},  # head_dim != hidden / heads, as in real Qwen3
    ),
    "tiny-mistral": ModelConfig(
        arch="mistral", name="dummy:tiny-mistral", rope_theta=1000000.0, **_TINY
    ),
}


def get_shape(name: str) -> ModelConfig:
    if name not in SHAPES:
        raise ValueError(f"unknown dummy shape {name!r}; choose one of {sorted(SHAPES)}")
    return SHAPES[name]
