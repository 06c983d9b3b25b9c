"""Store new tokens' K/V into one layer's paged cache.

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
