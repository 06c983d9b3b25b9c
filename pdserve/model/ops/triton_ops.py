"""Triton op bundle: the same functions and semantics as `torch_ref` (see ops/__init__).

The only module of pdserve, with its `triton_*` helpers, that imports triton; the engine picks
it with `get_ops("triton")`. Tensors on the CPU run through Triton's interpreter only when
TRITON_INTERPRET=1 was set before this module was imported (the CPU kernel tests do that).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pdserve.config import env_flag
from pdserve.model.ops import AttentionMetadata
from pdserve.model.ops.torch_ref import split_qkv
from pdserve.model.ops.triton_attention import attention
from pdserve.model.ops.triton_elementwise import add_rms_norm, rms_norm, rotary, silu_mul
from pdserve.model.ops.triton_gemv import MAX_ROWS, gemv, gemv_rotary_store_kv
from pdserve.model.ops.triton_kv_store import rotary_store_kv, store_kv

__all__ = [
    "add_rms_norm",
    "linear",
    "paged_attention",
    "qkv_rotary_store_kv",
    "rms_norm",
    "rotary",
    "rotary_store_kv",
    "silu_mul",
    "silu_mul_linear",
    "store_kv",
]

# Linear layers with at most this many rows run on the Triton GEMV (triton_gemv.py) instead of
# cuBLAS; 0 = never (the default until the H100 benchmark shows it pays: bench_kernels.py).
# PDSERVE_TRITON_GEMV=1 turns it on at import; benchmarks flip it by assigning this name.
gemv_max_rows = MAX_ROWS if env_flag("PDSERVE_TRITON_GEMV") else 0


def _use_gemv(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        0 < x.shape[0] <= gemv_max_rows
        and x.dim() == 2
        and weight.dtype == x.dtype
        and x.dtype in (torch.bfloat16, torch.float16)
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if _use_gemv(x, weight):
        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)


def qkv_rotary_store_kv(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    num_heads: int,
) -> torch.Tensor:
    """On the GEMV path, one launch (rope and the KV store as the projection's epilogue);
    otherwise cuBLAS + the fused rotary_store_kv (two launches)."""
    # A rope pair per output column: the tensor-core path needs >= 16 of them per head.
    if _use_gemv(hidden, weight) and (hidden.shape[0] == 1 or kv_cache.shape[-1] >= 32):
        return gemv_rotary_store_kv(hidden, weight, bias, positions, cos_sin, kv_cache,
                                    slot_mapping, num_heads)  # fmt: skip
    num_kv_heads, head_dim = kv_cache.shape[-2:]
    q, k, v = split_qkv(linear(hidden, weight, bias), num_heads, num_kv_heads, head_dim)
    return rotary_store_kv(q, k, v, positions, cos_sin, kv_cache, slot_mapping)


def silu_mul_linear(gate_up: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if _use_gemv(gate_up, weight):
        return gemv(gate_up, weight, silu_mul=True)
    return F.linear(silu_mul(gate_up), weight)


def paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    *,
    num_splits: int | None = None,
) -> torch.Tensor:
    """q: [T, num_heads, head_dim] -> [T, num_heads, head_dim], causal over the paged context.

    Never synchronizes with the host: it reads meta's device tensors and the host ints
    max_query_len / max_seq_len (tile shape, split count). For CUDA-graph capture of decode,
    pass `num_splits` fixed (e.g. what `default_num_splits` gives for the largest context the
    graph will replay): the grid then depends on tensor shapes only. One kernel serves decode
    (max_query_len 1: one program per (seq, kv head, split) reads K/V once for its whole GQA
    group) and prefill / chunked prefill / prefix hits (tiles of new tokens x group heads).
    """
    return attention(
        q,
        kv_cache,
        meta.query_start_loc,
        meta.seq_lens,
        meta.block_tables,
        meta.max_query_len,
        meta.max_seq_len,
        scale,
        num_splits=num_splits,
    )
