"""Store new tokens' K/V into one layer's paged cache, alone or fused with rope.

kv_cache: [num_blocks, 2, block_size, num_kv_heads, head_dim]; a token's slot is
block_id * block_size + offset. One program copies one token's K and V rows
([num_kv_heads * head_dim] each, contiguous in both source and cache). A negative slot
(padding in a CUDA-graph batch) is skipped.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, kv_ptr, slot_ptr, row_len,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_block, stride_kv, stride_tok,
    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:
        return
    dst = kv_ptr + (slot // BLOCK_SIZE) * stride_block + (slot % BLOCK_SIZE) * stride_tok
    i = tl.arange(0, BLOCK)
    mask = i < row_len
    head, d = i // HEAD_DIM, i % HEAD_DIM
    dtype = kv_ptr.dtype.element_ty
    k = tl.load(k_ptr + t * stride_kt + head * stride_kh + d, mask=mask)
    v = tl.load(v_ptr + t * stride_vt + head * stride_vh + d, mask=mask)
    tl.store(dst + i, k.to(dtype), mask=mask)
    tl.store(dst + stride_kv + i, v.to(dtype), mask=mask)


def store_kv(
    k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """k, v: [T, num_kv_heads, head_dim] (last dim contiguous) -> kv_cache at slot_mapping."""
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    row_len = num_kv_heads * head_dim
    block = triton.next_power_of_2(row_len)
    _store_kv_kernel[(num_tokens,)](
        k, v, kv_cache, slot_mapping, row_len,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2),
        HEAD_DIM=head_dim, BLOCK_SIZE=kv_cache.shape[2], BLOCK=block,
        num_warps=min(8, max(1, block // 256)),
    )  # fmt: skip


@triton.jit
def _rotary_store_kv_kernel(
    q_ptr, k_ptr, v_ptr, q_out_ptr, kv_ptr, slot_ptr, pos_ptr, cos_sin_ptr,
    num_heads, num_kv_heads,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_qot, stride_qoh,
    stride_block, stride_kv, stride_tok, stride_head, stride_cs,
    HALF: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    """One token, BLOCK_H rows of its stacked heads [q heads | k heads | v heads]:
    q rows are rotated into q_out, k rows rotated into the cache's K, v rows copied to its V.

    Each row is read as its two halves x1 = x[:HALF], x2 = x[HALF:] (rotate-half rope).
    """
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H] stacked head index
    c = tl.arange(0, BLOCK_HALF)
    c_ok = (c < HALF)[None, :]
    is_q = h < num_heads
    is_k = (h >= num_heads) & (h < num_heads + num_kv_heads)
    is_v = (h >= num_heads + num_kv_heads) & (h < num_heads + 2 * num_kv_heads)
    kv_head = tl.where(is_k, h - num_heads, h - num_heads - num_kv_heads)
    kv_head = tl.where(is_q, 0, kv_head)
    q_offs = t * stride_qt + h[:, None] * stride_qh + c[None, :]  # [BLOCK_H, BLOCK_HALF]
    k_offs = t * stride_kt + kv_head[:, None] * stride_kh + c[None, :]
    v_offs = t * stride_vt + kv_head[:, None] * stride_vh + c[None, :]
    q_mask = is_q[:, None] & c_ok
    k_mask = is_k[:, None] & c_ok
    v_mask = is_v[:, None] & c_ok
    # Three masked loads: each row reads from exactly one of q, k, v (the others give 0).
    x1 = (tl.load(q_ptr + q_offs, mask=q_mask, other=0.0).to(tl.float32)
          + tl.load(k_ptr + k_offs, mask=k_mask, other=0.0).to(tl.float32)
          + tl.load(v_ptr + v_offs, mask=v_mask, other=0.0).to(tl.float32))  # fmt: skip
    x2 = (tl.load(q_ptr + q_offs + HALF, mask=q_mask, other=0.0).to(tl.float32)
          + tl.load(k_ptr + k_offs + HALF, mask=k_mask, other=0.0).to(tl.float32)
          + tl.load(v_ptr + v_offs + HALF, mask=v_mask, other=0.0).to(tl.float32))  # fmt: skip

    pos = tl.load(pos_ptr + t).to(tl.int64)
    cos = tl.load(cos_sin_ptr + pos * stride_cs + c, mask=c < HALF, other=0.0).to(tl.float32)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + HALF + c, mask=c < HALF, other=0.0)
    sin = sin.to(tl.float32)
    y1 = tl.where(is_v[:, None], x1, x1 * cos[None, :] - x2 * sin[None, :])
    y2 = tl.where(is_v[:, None], x2, x2 * cos[None, :] + x1 * sin[None, :])

    q_dtype = q_out_ptr.dtype.element_ty
    qo_offs = t * stride_qot + h[:, None] * stride_qoh + c[None, :]
    tl.store(q_out_ptr + qo_offs, y1.to(q_dtype), mask=q_mask)
    tl.store(q_out_ptr + qo_offs + HALF, y2.to(q_dtype), mask=q_mask)

    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:  # a negative slot (padding in a CUDA-graph batch) stores nothing
        # Rope rounds k to its own dtype first, as rotary() then store_kv() would.
        k_dtype = k_ptr.dtype.element_ty
        cache_dtype = kv_ptr.dtype.element_ty
        y1 = tl.where(is_k[:, None], y1.to(k_dtype).to(tl.float32), y1)
        y2 = tl.where(is_k[:, None], y2.to(k_dtype).to(tl.float32), y2)
        kv_half = tl.where(is_v, stride_kv, 0)  # [BLOCK_H] K rows -> K half, V rows -> V half
        dst = (kv_ptr + (slot // BLOCK_SIZE) * stride_block + (slot % BLOCK_SIZE) * stride_tok
               + (kv_half + kv_head * stride_head)[:, None] + c[None, :])  # fmt: skip
        kv_mask = (is_k | is_v)[:, None] & c_ok
        tl.store(dst, y1.to(cache_dtype), mask=kv_mask)
        tl.store(dst + HALF, y2.to(cache_dtype), mask=kv_mask)


def rotary_store_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    inplace: bool = True,
) -> torch.Tensor:
    """rotary(q, k) then store_kv(k, v) in one launch; -> rotated q (see ops/__init__).

    q [T, H, D], k/v [T, KV, D]: views with a contiguous last dim (e.g. slices of the qkv
    projection's output). `inplace=True` writes the rotated q over q (no allocation).
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if cos_sin.shape[-1] != head_dim:
        raise ValueError(f"rope table width {cos_sin.shape[-1]} != head_dim {head_dim}")
    if cos_sin.stride(-1) != 1:
        cos_sin = cos_sin.contiguous()
    if q.stride(-1) != 1:
        q = q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    q_out = q if inplace else torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return q_out
    half = head_dim // 2
    block_half = triton.next_power_of_2(half)
    num_rows = num_heads + 2 * num_kv_heads
    block_h = min(triton.next_power_of_2(num_rows), max(1, 2048 // block_half))
    grid = (num_tokens, triton.cdiv(num_rows, block_h))
    _rotary_store_kv_kernel[grid](
        q, k, v, q_out, kv_cache, slot_mapping, positions, cos_sin,
        num_heads, num_kv_heads,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        q_out.stride(0), q_out.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        cos_sin.stride(0),
        HALF=half, BLOCK_SIZE=kv_cache.shape[2], BLOCK_H=block_h, BLOCK_HALF=block_half,
        num_warps=4,
    )  # fmt: skip
    return q_out
