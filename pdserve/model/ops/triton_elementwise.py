"""Fused elementwise kernels: (add +) rms norm, neox rotary, silu * up.

All compute in float32 and round once to the output dtype. Rows are the flattened leading
dimensions; the last dimension must be contiguous (a row stride is passed, so views such as
q = qkv[:, :q_size].view(T, H, D) need no copy).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, n_cols, eps,
    stride_x, stride_res, stride_out, stride_res_out,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One row: [res_out = x + res;] out = norm(res_out or x) * w."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
        # Round the sum to the residual dtype first: the norm sees what the next layer sees.
        summed = (x + res).to(res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * stride_res_out + cols, summed, mask=mask)
        x = summed.to(tl.float32)
    inv_rms = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = x * inv_rms * w
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """View x as [rows, last_dim] with a contiguous last dim (copies only if it must)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _norm_warps(block: int) -> int:
    return min(16, max(1, block // 256))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x2 = _rows(x)
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    if x2.shape[0] == 0:
        return out.view(x.shape)
    block = triton.next_power_of_2(x2.shape[1])
    _rms_norm_kernel[(x2.shape[0],)](
        x2, x2, weight, out, out, x2.shape[1], eps,
        x2.stride(0), x2.stride(0), out.stride(0), out.stride(0),
        HAS_RESIDUAL=False, BLOCK=block, num_warps=_norm_warps(block),
    )  # fmt: skip
    return out.view(x.shape)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual: same shape. Both outputs take torch's promoted dtype of `x + residual`."""
    x2, r2 = _rows(x), _rows(residual)
    dtype = torch.result_type(x, residual)
    out = torch.empty(x2.shape, dtype=dtype, device=x.device)
    res_out = torch.empty(x2.shape, dtype=dtype, device=x.device)
    if x2.shape[0] > 0:
        block = triton.next_power_of_2(x2.shape[1])
        _rms_norm_kernel[(x2.shape[0],)](
            x2, r2, weight, out, res_out, x2.shape[1], eps,
            x2.stride(0), r2.stride(0), out.stride(0), res_out.stride(0),
            HAS_RESIDUAL=True, BLOCK=block, num_warps=_norm_warps(block),
        )  # fmt: skip
    return out.view(x.shape), res_out.view(x.shape)


@triton.jit
def _rotary_kernel(
    x_ptr, out_ptr, pos_ptr, cos_sin_ptr, num_heads,
    stride_xt, stride_xh, stride_ot, stride_oh, stride_cs,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    """One token, all heads: [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin] (rotate-half)."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    c = tl.arange(0, BLOCK_HALF)
    c_ok = c < HALF
    pos = tl.load(pos_ptr + t).to(tl.int64)
    cos = tl.load(cos_sin_ptr + pos * stride_cs + c, mask=c_ok, other=0.0).to(tl.float32)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + HALF + c, mask=c_ok, other=0.0).to(tl.float32)
    mask = (h < num_heads)[:, None] & c_ok[None, :]
    x_offs = t * stride_xt + h[:, None] * stride_xh + c[None, :]  # [BLOCK_H, BLOCK_HALF]
    x1 = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + x_offs + HALF, mask=mask, other=0.0).to(tl.float32)
    o_offs = t * stride_ot + h[:, None] * stride_oh + c[None, :]
    dtype = out_ptr.dtype.element_ty
    tl.store(out_ptr + o_offs, (x1 * cos[None, :] - x2 * sin[None, :]).to(dtype), mask=mask)
    tl.store(out_ptr + o_offs + HALF, (x2 * cos[None, :] + x1 * sin[None, :]).to(dtype), mask=mask)


def _rotate(x: torch.Tensor, out: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor):
    num_tokens, num_heads, head_dim = x.shape
    if num_tokens == 0:
        return
    half = head_dim // 2
    block_half = triton.next_power_of_2(half)
    block_h = min(triton.next_power_of_2(num_heads), max(1, 2048 // block_half))
    grid = (num_tokens, triton.cdiv(num_heads, block_h))
    _rotary_kernel[grid](
        x, out, positions, cos_sin, num_heads,
        x.stride(0), x.stride(1), out.stride(0), out.stride(1), cos_sin.stride(0),
        HALF=half, BLOCK_H=block_h, BLOCK_HALF=block_half, num_warps=4,
    )  # fmt: skip


def rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    *,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox rope on q [T, Hq, D] and k [T, Hkv, D]; `inplace=True` overwrites and returns them."""
    if cos_sin.stride(-1) != 1:
        cos_sin = cos_sin.contiguous()
    results = []
    for x in (q, k):
        if x.stride(-1) != 1:
            if inplace:
                raise ValueError("rotary(inplace=True) needs a contiguous last dimension")
            x = x.contiguous()
        out = x if inplace else torch.empty(x.shape, dtype=x.dtype, device=x.device)
        _rotate(x, out, positions, cos_sin)
        results.append(out)
    return results[0], results[1]


@triton.jit
def _silu_mul_kernel(
    x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK: tl.constexpr
):  # fmt: skip
    """One row chunk: out = silu(gate) * up, gate = x[:, :n_cols], up = x[:, n_cols:]."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    y = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    x2 = _rows(gate_up)
    n_cols = x2.shape[1] // 2
    out = torch.empty(x2.shape[0], n_cols, dtype=gate_up.dtype, device=gate_up.device)
    if x2.shape[0] > 0 and n_cols > 0:
        block = min(1024, triton.next_power_of_2(n_cols))
        grid = (x2.shape[0], triton.cdiv(n_cols, block))
        _silu_mul_kernel[grid](x2, out, n_cols, x2.stride(0), out.stride(0), BLOCK=block,
                               num_warps=4)  # fmt: skip
    return out.view(*gate_up.shape[:-1], n_cols)
