"""GGUF files (llama.cpp): ModelConfig from the metadata, dequantized weights under HF names."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFValueType

from pdserve.config import ModelConfig

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")
_ARCHS = ("llama", "qwen2", "qwen3")
_ARRAY, _STRING = GGUFValueType.ARRAY, GGUFValueType.STRING

# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.")
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def open_gguf(path: str | Path) -> Any:
    """A memory-mapped reader. Cached: parsing a 50k-token vocabulary takes gguf ~10 s, and the
    model loader and the tokenizer both read the same file."""
    resolved = Path(path).resolve()
    return _open_cached(str(resolved), resolved.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _open_cached(path: str, mtime_ns: int) -> Any:
    import gguf

    return gguf.GGUFReader(path)


def field(reader: Any, key: str, default: Any = None) -> Any:
    """A metadata value as a Python scalar, string or list; `default` when absent."""
    f = reader.fields.get(key)
    if f is None:
        return default
    if f.types[:1] == [_ARRAY] and len(f.types) == 2 and f.types[1] == _STRING:
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]  # 100x faster than contents()
    if f.types[:1] == [_ARRAY] and len(f.types) == 2:
        return [f.parts[i][0].item() for i in f.data]
    return f.contents()


def gguf_config(reader: Any, name: str = "") -> ModelConfig:
    arch = field(reader, "general.architecture")
    if arch not in _ARCHS:
        raise ValueError(
            f"unsupported GGUF architecture {arch!r} in {name}; supported: {list(_ARCHS)}"
        )
    tensor_names = {t.name for t in reader.tensors}

    def meta(key: str, default: Any = None) -> Any:
        return field(reader, f"{arch}.{key}", default)

    hidden = int(meta("embedding_length"))
    num_heads = int(meta("attention.head_count"))
    num_kv_heads = int(meta("attention.head_count_kv", num_heads))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    eos_ids = [field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    return ModelConfig(
        arch=arch,
        vocab_size=int(meta("vocab_size", len(tokens.data) if tokens else 0)),
        hidden_size=hidden,
        intermediate_size=int(meta("feed_forward_length")),
        num_layers=int(meta("block_count")),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=int(meta("attention.key_length", hidden // num_heads)),
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        rope_scaling=_llama3_scaling(reader),
        max_position_embeddings=int(meta("context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
        bos_token_id=field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(dict.fromkeys(int(i) for i in eos_ids if i is not None)),
        name=name,
    )


def _llama3_scaling(reader: Any) -> dict | None:
    """llama.cpp bakes Llama-3.1/3.2 rope scaling into a `rope_freqs` tensor of per-frequency
    divisors; the largest divisor is `factor`. The other parameters are the same in every
    released Llama 3.x model, which is what llama.cpp computed the tensor from."""
    freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if freqs is None:
        return None
    return {
        "rope_type": "llama3",
        "factor": float(np.asarray(freqs.data, dtype=np.float32).max()),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }


def check_tensor_types(reader: Any, path: str | Path) -> None:
    for t in reader.tensors:
        if t.tensor_type.name not in SUPPORTED_TYPES:
            raise ValueError(
                f"{path}: tensor {t.name!r} has unsupported GGUF type {t.tensor_type.name}; "
                f"supported: {', '.join(SUPPORTED_TYPES)}"
            )


def unpermute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order for its interleaved (GPT-J) rope.

    llama.cpp, per head: rows [x0 y0 x1 y1 ...] (pairs interleaved)
    HF / ours, per head: rows [x0 x1 ... | y0 y1 ...] (rotate-half)
    """
    rows = w.shape[0]
    half = rows // num_heads // 2
    return w.reshape(num_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of `unpermute_rope_rows` (HF order -> llama.cpp order); used to write test files."""
    half = w.shape[0] // num_heads // 2
    return w.reshape(num_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(gguf_name: str) -> str | None:
    """HF parameter name of a GGUF tensor; None for tensors we do not use (rope_freqs)."""
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{parts[3]}"
    if gguf_name == "rope_freqs.weight":
        return None
    raise ValueError(f"unexpected GGUF tensor {gguf_name!r}")


def iter_gguf_weights(reader: Any, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, float32 CPU tensor) per tensor; one tensor dequantized at a time."""
    from gguf.quants import dequantize

    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            continue
        w = dequantize(t.data, t.tensor_type)  # [rows, cols] float32 (numpy, row-major)
        if cfg.arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_heads if "q_proj" in name else cfg.num_kv_heads
            w = unpermute_rope_rows(w, heads)
        yield (
            name,
            torch.from_numpy(np.array(w, dtype=np.float32)),
        )  # copy: w may be a read-only mmap
