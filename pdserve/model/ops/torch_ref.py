"""Plain PyTorch ops: the CPU path and the oracle for the GPU kernels (contract: ops/__init__)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pdserve.model.ops import AttentionMetadata


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (x32 * weight.float()).to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    residual = x + residual
    return rms_norm(residual, weight, eps), residual


def rotary(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    half = cos_sin.shape[-1] // 2
    cs = cos_sin[positions]  # [T, head_dim]
    cos = cs[:, None, :half].float()
    sin = cs[:, None, half:].float()

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def store_kv(
    k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    num_blocks, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    flat = kv_cache.view(num_blocks, 2, block_size, num_kv_heads * head_dim)
    if slot_mapping.numel() and int(slot_mapping.min()) < 0:  # padding rows store nothing
        keep = slot_mapping >= 0
        k, v, slot_mapping = k[keep], v[keep], slot_mapping[keep]
    block_ids = slot_mapping // block_size
    offsets = slot_mapping % block_size
    flat[block_ids, 0, offsets] = k.flatten(1).to(kv_cache.dtype)
    flat[block_ids, 1, offsets] = v.flatten(1).to(kv_cache.dtype)


def rotary_store_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> torch.Tensor:
    q, k = rotary(q, k, positions, cos_sin)
    store_kv(k, v, kv_cache, slot_mapping)
    return q


def split_qkv(
    qkv: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[T, (H + 2 KV) * D] -> views q [T, H, D], k [T, KV, D], v [T, KV, D]."""
    kv_size = num_kv_heads * head_dim
    q, k, v = qkv.split([num_heads * head_dim, kv_size, kv_size], dim=-1)
    num_tokens = qkv.shape[0]
    return (
        q.reshape(num_tokens, num_heads, head_dim),
        k.reshape(num_tokens, num_kv_heads, head_dim),
        v.reshape(num_tokens, num_kv_heads, head_dim),
    )


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
    num_kv_heads, head_dim = kv_cache.shape[-2:]
    q, k, v = split_qkv(linear(hidden, weight, bias), num_heads, num_kv_heads, head_dim)
    return rotary_store_kv(q, k, v, positions, cos_sin, kv_cache, slot_mapping)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def silu_mul_linear(gate_up: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(silu_mul(gate_up), weight)


def gather_kv(
    kv_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence's context from the paged cache: K, V as [seq_len, num_kv_heads, head_dim]."""
    block_size = kv_cache.shape[2]
    num_blocks = (seq_len + block_size - 1) // block_size
    blocks = kv_cache[block_table[:num_blocks].long()]  # [n, 2, block_size, H, D]
    k = blocks[:, 0].flatten(0, 1)[:seq_len]
    v = blocks[:, 1].flatten(0, 1)[:seq_len]
    return k, v


def paged_attention(
    q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    if meta.is_pure_decode:
        return _decode_attention(q, kv_cache, meta, scale)
    num_heads = q.shape[1]
    num_kv_heads = kv_cache.shape[3]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    starts = meta.query_start_loc_cpu
    for i, seq_len in enumerate(meta.seq_lens_cpu):
        begin, end = starts[i], starts[i + 1]
        q_len = end - begin
        if q_len == 0:
            continue
        k, v = gather_kv(kv_cache, meta.block_tables[i], seq_len)
        qi = q[begin:end].transpose(0, 1).float()  # [H, q_len, D]
        ki = k.transpose(0, 1).float().repeat_interleave(group, dim=0)  # [H, seq_len, D]
        vi = v.transpose(0, 1).float().repeat_interleave(group, dim=0)
        # New token j sits at position seq_len - q_len + j and sees keys 0 .. that position.
        mask = None
        if q_len > 1:
            q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)[:, None]
            mask = torch.arange(seq_len, device=q.device)[None, :] <= q_pos
        o = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=scale)
        out[begin:end] = o.transpose(0, 1).to(q.dtype)
    return out


def _decode_attention(
    q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """One new token per sequence: every context gathered into one padded batch and one SDPA
    call (a Python loop over sequences costs more than the attention itself on a CPU). The q
    heads of a GQA group share their K/V, so they ride as the group's "query positions"."""
    num_seqs, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    max_len = meta.max_seq_len
    num_blocks = (max_len + block_size - 1) // block_size
    blocks = kv_cache[meta.block_tables[:, :num_blocks].long()]  # [B, n, 2, bs, KV, D]
    flat = blocks.transpose(1, 2).reshape(
        num_seqs, 2, num_blocks * block_size, num_kv_heads, head_dim
    )
    k = flat[:, 0, :max_len].transpose(1, 2).float()  # [B, KV, L, D]
    v = flat[:, 1, :max_len].transpose(1, 2).float()
    valid = torch.arange(max_len, device=q.device)[None, :] < meta.seq_lens[:, None]  # [B, L]
    grouped = q.float().view(num_seqs, num_kv_heads, num_heads // num_kv_heads, head_dim)
    out = F.scaled_dot_product_attention(
        grouped, k, v, attn_mask=valid[:, None, None, :], scale=scale
    )  # [B, KV, G, D]
    return out.reshape(num_seqs, num_heads, head_dim).to(q.dtype)
