"""Frozen per-room configs. The only module that reads environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Shape and numerics of one Llama-family model (Llama 2/3, Qwen2/2.5/3, Mistral, SmolLM2)."""

    arch: str  # "llama" | "qwen2" | "qwen3" | "mistral"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # Llama-3.1 style: {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}; None for plain rope.
    rope_scaling: dict | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2/2.5: bias on q, k, v projections
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k before rope
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    name: str = ""

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V per token over all layers, at 2 bytes per element (bf16)."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * 2


@dataclass(frozen=True, slots=True)
class CacheConfig:
    block_size: int = 16  # tokens per KV block
    num_blocks: int | None = None  # None: sized from memory (GPU) or from cpu_kv_gib
    cpu_kv_gib: float = 1.0
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_batched_tokens: int = 2048  # token budget per step
    max_num_seqs: int = 256
    max_model_len: int = 0  # 0: the model's context length
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0  # 0: a single prefill may take the whole budget
    policy: str = "fcfs"  # "fcfs" | "priority"
    kv_lease_s: float = 30.0  # how long a prefill instance holds sent KV without a confirmation


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str = ""  # path to a GGUF file or HF folder, or "dummy:<shape>"; "" = embedded default
    dtype: str = (
        "auto"  # "auto" (float32 on CPU, bfloat16 on GPU) | "float32" | "bfloat16" | "float16"
    )
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    seed: int = 0
    enforce_eager: bool = False  # no CUDA graphs
    # Schedule step N+1 while the device runs step N. None = on where it pays (CUDA).
    async_scheduling: bool | None = None
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


def env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)
