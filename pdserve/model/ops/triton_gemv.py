"""Skinny GEMM ("GEMV") for decode at small batch: y [M, N] = x [M, K] @ w [N, K].T, M <= 8.

At M <= 8 a linear layer is a read of its weight: 2 * N * K bytes for 2 * M * N * K flops, far
below the tensor cores' ratio, so all that matters is streaming w at the memory's rate. Each
program owns BLOCK_N output columns (rows of w) and walks the whole K:

    w: [N, K] row-major         program p reads rows p*BLOCK_N .. p*BLOCK_N+BLOCK_N-1, K tiles
       |== p0 ==>==>==>==>|     of BLOCK_K columns, and keeps a [BLOCK_M, BLOCK_N] float32 sum
       |== p1 ==>==>==>==>|     x [M, K] is tiny and re-read from L2 by every program
       ...

M = 1 multiplies on the CUDA cores (w tile * x row, summed over K); M = 2..8 pads x to 16 rows
and uses tl.dot (the tensor cores are idle otherwise, and a 16-row dot costs nothing extra).
K is a compile-time constant (a model has two or three distinct K; the loop's trip count is
then known). BLOCK_N is chosen so that there are a few programs per SM (no split-K: no second
launch, no atomics), BLOCK_K so that a tile is ~8k elements (64 per thread at 4 warps).

`silu_mul=True` reads x as gate_up [M, 2K] and multiplies silu(gate) * up (rounded to x's
dtype, as ops.silu_mul would) while loading: the MLP's activation costs no launch of its own.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

MAX_ROWS = 8  # the largest M this kernel is meant for; bigger batches go to cuBLAS


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, M, N, stride_xm, stride_wn, stride_ym,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr, USE_DOT: tl.constexpr,
    ACC_WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, NUM_STAGES: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] output columns = rows of w
    m = tl.arange(0, BLOCK_M)
    k = tl.arange(0, BLOCK_K)
    n_ok = n < N
    m_ok = m < M
    w_ptrs = w_ptr + n.to(tl.int64)[:, None] * stride_wn + k[None, :]  # [BLOCK_N, BLOCK_K]
    x_ptrs = x_ptr + m.to(tl.int64)[:, None] * stride_xm + k[None, :]  # [BLOCK_M, BLOCK_K]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # One row on the CUDA cores (ACC_WIDE): products pile up elementwise in a [BLOCK_N, BLOCK_K]
    # tile and are summed over K once at the end (no cross-thread reduction per K step).
    if ACC_WIDE:
        acc_wide = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    else:
        acc_wide = tl.zeros([1, 1], dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
        k_ok = (k0 + k) < K
        if EVEN_N and EVEN_K:
            w = tl.load(w_ptrs)
        else:
            w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        x_mask = m_ok[:, None] & k_ok[None, :]
        x = tl.load(x_ptrs, mask=x_mask, other=0.0)
        if SILU_MUL:  # x_ptrs walk gate = gate_up[:, :K]; up sits K columns to the right
            up = tl.load(x_ptrs + K, mask=x_mask, other=0.0).to(tl.float32)
            gate = x.to(tl.float32)
            x = (gate / (1.0 + tl.exp(-gate)) * up).to(x_ptr.dtype.element_ty)
        if USE_DOT:
            if DOT_FP32:
                acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)),
                              input_precision=PRECISION)  # fmt: skip
            else:
                acc += tl.dot(x, tl.trans(w), input_precision=PRECISION)
        elif ACC_WIDE:
            acc_wide += w.to(tl.float32) * x.to(tl.float32)  # [BLOCK_N, BLOCK_K] * [1, BLOCK_K]
        else:
            prod = x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
            acc += tl.sum(prod, axis=2)  # [BLOCK_M, BLOCK_N]
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if ACC_WIDE:
        acc = tl.sum(acc_wide, axis=1)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + m.to(tl.int64)[:, None] * stride_ym + n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@functools.lru_cache(maxsize=256)  # called per linear layer per step; treat the dict as frozen
def default_config(num_rows: int, n: int, k: int, num_sms: int) -> dict[str, int]:
    """Tile shape for y [num_rows, n] = x @ w[n, k].T (a guess; benchmarks/bench_kernels.py
    sweeps the alternatives on the 8B shapes and prints the best per shape).

    BLOCK_N: the largest (<= 64) that still gives >= 2 programs per SM, so every SM streams.
    BLOCK_K: a BLOCK_N x BLOCK_K tile of ~8k elements (at most 256 wide on the dot path).
    """
    use_dot = num_rows > 1
    smallest = 16 if use_dot else 4
    block_n = 64
    while block_n > smallest and triton.cdiv(n, block_n) < 2 * num_sms:
        block_n //= 2
    # The dot path's x tile is 16 rows (mostly padding) x BLOCK_K: 256 keeps it (and silu_mul's
    # float32 gate/up) in registers; 512 spilled on sm_90 (ptxas -v).
    widest = 256 if use_dot else 1024
    block_k = max(32, min(widest, 8192 // block_n, triton.next_power_of_2(k)))
    return {"block_n": block_n, "block_k": block_k, "use_dot": int(use_dot),
            "num_warps": 4, "num_stages": 4}  # fmt: skip


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    silu_mul: bool = False,
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """x [M, K] (or gate_up [M, 2K] with silu_mul) @ weight [N, K].T (+ bias) -> [M, N] in x's
    dtype. Needs weight's last dim contiguous; any M works, but it pays only for M <= 8."""
    num_rows = x.shape[0]
    n, k = weight.shape
    if (x.shape[1] // 2 if silu_mul else x.shape[1]) != k:
        raise ValueError(f"gemv: x {tuple(x.shape)} does not match weight {tuple(weight.shape)}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    y = torch.empty(num_rows, n, dtype=x.dtype, device=x.device)
    if num_rows == 0 or n == 0:
        return y
    is_cuda = x.is_cuda
    if config is None:
        num_sms = torch.cuda.get_device_properties(x.device).multi_processor_count if is_cuda else 4
        config = default_config(num_rows, n, k, num_sms)
    use_dot = bool(config["use_dot"])
    block_m = (
        max(16, triton.next_power_of_2(num_rows)) if use_dot else triton.next_power_of_2(num_rows)
    )
    block_n, block_k = config["block_n"], config["block_k"]
    grid = (triton.cdiv(n, block_n),)
    _gemv_kernel[grid](
        x, weight, bias if bias is not None else weight, y, num_rows, n,
        x.stride(0), weight.stride(0), y.stride(0), k,
        HAS_BIAS=bias is not None, SILU_MUL=silu_mul, USE_DOT=use_dot,
        ACC_WIDE=not use_dot and block_m == 1,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        EVEN_N=n % block_n == 0, EVEN_K=k % block_k == 0, NUM_STAGES=config["num_stages"],
        # The interpreter's bf16 tl.dot is wrong (triton 3.6): multiply in float32 there.
        DOT_FP32=not is_cuda or x.dtype == torch.float32,
        PRECISION="ieee" if (x.dtype == torch.float32 or not is_cuda) else "tf32",
        num_warps=config["num_warps"],
    )  # fmt: skip
    return y


@triton.jit
def _gemv_rope_store_kernel(
    x_ptr, w_ptr, b_ptr, q_out_ptr, kv_ptr, slot_ptr, pos_ptr, cos_sin_ptr,
    M, num_heads, num_kv_heads, stride_xm, stride_wn, stride_qot, stride_qoh,
    stride_block, stride_kv, stride_tok, stride_head, stride_cs,
    K: tl.constexpr, HEAD_DIM: tl.constexpr, HALF: tl.constexpr, BLOCK_J: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, NUM_STAGES: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """The qkv projection of M tokens with rope and the KV store as its epilogue.

    Program p owns one stacked head h of [q heads | k heads | v heads] and BLOCK_J columns j of
    its first half: it computes output columns h*D + j and h*D + HALF + j (a rope pair) and
    writes rope(q) to q_out, rope(k) and v to the cache at each token's slot (-1: skipped).
    """
    pid = tl.program_id(0)
    head = pid // (HALF // BLOCK_J)
    j = (pid % (HALF // BLOCK_J)) * BLOCK_J + tl.arange(0, BLOCK_J)  # [BLOCK_J]
    m = tl.arange(0, BLOCK_M)
    k = tl.arange(0, BLOCK_K)
    m_ok = m < M
    row1 = (head * HEAD_DIM + j).to(tl.int64)  # [BLOCK_J] rows of w: first half of the pair
    w1_ptrs = w_ptr + row1[:, None] * stride_wn + k[None, :]  # [BLOCK_J, BLOCK_K]
    w2_ptrs = w1_ptrs + HALF * stride_wn
    x_ptrs = x_ptr + m.to(tl.int64)[:, None] * stride_xm + k[None, :]  # [BLOCK_M, BLOCK_K]
    if USE_DOT:
        acc1 = tl.zeros([BLOCK_M, BLOCK_J], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_J], dtype=tl.float32)
    else:  # one row: elementwise products, summed over K after the loop (as _gemv_kernel)
        acc1 = tl.zeros([BLOCK_J, BLOCK_K], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_J, BLOCK_K], dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
        k_ok = (k0 + k) < K
        if EVEN_K:
            w1 = tl.load(w1_ptrs)
            w2 = tl.load(w2_ptrs)
        else:
            w1 = tl.load(w1_ptrs, mask=k_ok[None, :], other=0.0)
            w2 = tl.load(w2_ptrs, mask=k_ok[None, :], other=0.0)
        x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if USE_DOT:
            if DOT_FP32:
                x = x.to(tl.float32)
                w1 = w1.to(tl.float32)
                w2 = w2.to(tl.float32)
            acc1 += tl.dot(x, tl.trans(w1), input_precision=PRECISION)
            acc2 += tl.dot(x, tl.trans(w2), input_precision=PRECISION)
        else:
            xf = x.to(tl.float32)  # [1, BLOCK_K]
            acc1 += w1.to(tl.float32) * xf
            acc2 += w2.to(tl.float32) * xf
        w1_ptrs += BLOCK_K
        w2_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if USE_DOT:
        y1 = acc1  # [BLOCK_M, BLOCK_J]
        y2 = acc2
    else:
        y1 = tl.sum(acc1, axis=1)[None, :]  # [1, BLOCK_J]
        y2 = tl.sum(acc2, axis=1)[None, :]
    if HAS_BIAS:
        y1 += tl.load(b_ptr + row1).to(tl.float32)[None, :]
        y2 += tl.load(b_ptr + row1 + HALF).to(tl.float32)[None, :]
    # The projection's output dtype first, as linear() then rotary_store_kv() would round.
    x_dtype = x_ptr.dtype.element_ty
    y1 = y1.to(x_dtype).to(tl.float32)
    y2 = y2.to(x_dtype).to(tl.float32)
    if head < num_heads + num_kv_heads:  # q or k: rotate
        pos = tl.load(pos_ptr + m, mask=m_ok, other=0).to(tl.int64)
        cs = cos_sin_ptr + pos[:, None] * stride_cs + j[None, :]
        cos = tl.load(cs, mask=m_ok[:, None], other=0.0).to(tl.float32)
        sin = tl.load(cs + HALF, mask=m_ok[:, None], other=0.0).to(tl.float32)
        r1 = y1 * cos - y2 * sin
        r2 = y2 * cos + y1 * sin
        y1 = r1.to(x_dtype).to(tl.float32)
        y2 = r2.to(x_dtype).to(tl.float32)
    if head < num_heads:
        q_dtype = q_out_ptr.dtype.element_ty
        qo = q_out_ptr + m.to(tl.int64)[:, None] * stride_qot + head * stride_qoh + j[None, :]
        tl.store(qo, y1.to(q_dtype), mask=m_ok[:, None])
        tl.store(qo + HALF, y2.to(q_dtype), mask=m_ok[:, None])
    else:
        is_v = head >= num_heads + num_kv_heads
        kv_head = tl.where(is_v, head - num_heads - num_kv_heads, head - num_heads)
        half_offset = tl.where(is_v, stride_kv, 0)  # K half or V half of the block
        slot = tl.load(slot_ptr + m, mask=m_ok, other=-1).to(tl.int64)  # [BLOCK_M]
        dst = (kv_ptr + (slot // BLOCK_SIZE) * stride_block + (slot % BLOCK_SIZE) * stride_tok
               + half_offset + kv_head * stride_head)[:, None] + j[None, :]  # fmt: skip
        store_ok = (m_ok & (slot >= 0))[:, None]
        cache_dtype = kv_ptr.dtype.element_ty
        tl.store(dst, y1.to(cache_dtype), mask=store_ok)
        tl.store(dst + HALF, y2.to(cache_dtype), mask=store_ok)


def gemv_rotary_store_kv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    num_heads: int,
    *,
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """qkv = x @ weight.T (+ bias); rope(q), rope(k) -> cache, v -> cache: one launch, the
    same results as linear + ops.rotary_store_kv. x [M, K], weight [(H + 2 KV) * D, K],
    kv_cache [num_blocks, 2, block_size, KV, D]; -> q [M, H, D]."""
    num_rows, k = x.shape
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    if weight.shape != ((num_heads + 2 * num_kv_heads) * head_dim, k):
        raise ValueError(
            f"gemv_rotary_store_kv: weight {tuple(weight.shape)} is not the qkv projection "
            f"of {num_heads} q / {num_kv_heads} kv heads of {head_dim}"
        )
    if cos_sin.shape[-1] != head_dim or head_dim % 2:
        raise ValueError(f"rope table width {cos_sin.shape[-1]} != head_dim {head_dim}")
    x = x if x.stride(-1) == 1 else x.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    cos_sin = cos_sin if cos_sin.stride(-1) == 1 else cos_sin.contiguous()
    q = torch.empty(num_rows, num_heads, head_dim, dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return q
    is_cuda = x.is_cuda
    if config is None:
        num_sms = torch.cuda.get_device_properties(x.device).multi_processor_count if is_cuda else 4
        config = default_config(num_rows, weight.shape[0], k, num_sms)
    use_dot = bool(config["use_dot"])
    block_m = max(16, triton.next_power_of_2(num_rows)) if use_dot else 1
    if not use_dot and num_rows > 1:
        raise ValueError("gemv_rotary_store_kv: the CUDA-core path takes one row")
    half = head_dim // 2
    # A rope pair per column: BLOCK_N columns of the plain GEMV = 2 x BLOCK_J here.
    block_j = min(max(config["block_n"] // 2, 16 if use_dot else 1), half)
    if half % block_j:
        raise ValueError(f"head_dim {head_dim}: half {half} is not a multiple of {block_j}")
    block_k = config["block_k"]
    grid = ((num_heads + 2 * num_kv_heads) * (half // block_j),)
    _gemv_rope_store_kernel[grid](
        x, weight, bias if bias is not None else weight, q, kv_cache, slot_mapping, positions,
        cos_sin, num_rows, num_heads, num_kv_heads, x.stride(0), weight.stride(0),
        q.stride(0), q.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        cos_sin.stride(0),
        K=k, HEAD_DIM=head_dim, HALF=half, BLOCK_J=block_j, BLOCK_SIZE=block_size,
        HAS_BIAS=bias is not None, USE_DOT=use_dot, BLOCK_M=block_m, BLOCK_K=block_k,
        EVEN_K=k % block_k == 0, NUM_STAGES=config["num_stages"],
        DOT_FP32=not is_cuda or x.dtype == torch.float32,
        PRECISION="ieee" if (x.dtype == torch.float32 or not is_cuda) else "tf32",
        num_warps=config["num_warps"],
    )  # fmt: skip
    return q
