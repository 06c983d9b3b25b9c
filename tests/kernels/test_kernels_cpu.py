"""The Triton kernels on CPU tensors through Triton's interpreter, against torch_ref.

Small shapes: the interpreter runs each program in Python. Runs in CI (no `gpu` mark).
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (optional GPU dependency)")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("kernels run on the GPU in this process; see test_kernels_gpu.py",
                allow_module_level=True)  # fmt: skip

from pdserve.model.ops import get_ops, torch_ref, triton_attention  # noqa: E402
from tests.kernels.helpers import make_problem, rel_err  # noqa: E402

ops = get_ops("triton")
if type(triton_attention._attn_kernel).__name__ != "InterpretedFunction":
    pytest.skip("triton_ops was imported before TRITON_INTERPRET was set (conftest.py sets it)",
                allow_module_level=True)  # fmt: skip
pytestmark = pytest.mark.usefixtures("poison_empty")


def _attention_case(seq_lens, q_lens, *, group, block_size, dtype=torch.bfloat16, splits=None):
    q, kv, meta = make_problem(seq_lens, q_lens, num_kv_heads=2, group=group, head_dim=32,
                               block_size=block_size, dtype=dtype, device="cpu")  # fmt: skip
    out = ops.paged_attention(q, kv, meta, 0.17, num_splits=splits)
    ref = torch_ref.paged_attention(q.float(), kv.float(), meta, 0.17)
    assert torch.isfinite(out).all(), "some output element was never written"
    return rel_err(out, ref)


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_decode_ragged_matches_reference(block_size, group):
    err = _attention_case([1, 17, 70, 33], [1, 1, 1, 1], group=group, block_size=block_size)
    assert err < 1e-2


@pytest.mark.parametrize("splits", [2, 5])
def test_decode_split_k_matches_reference(splits):
    # 5 splits of a 3-token context leave empty splits: they must weigh nothing.
    err = _attention_case([3, 90, 41], [1, 1, 1], group=4, block_size=16, splits=splits)
    assert err < 1e-2


def test_decode_float32_is_exact():
    err = _attention_case([9, 66], [1, 1], group=4, block_size=16, dtype=torch.float32, splits=2)
    assert err < 1e-5


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_prefill_with_prefix_hits_matches_reference(block_size, group):
    # Full prompt, prefix hit (q_len < seq_len), one decode token in a mixed step.
    err = _attention_case([40, 53, 20], [40, 9, 1], group=group, block_size=block_size)
    assert err < 1e-2


def test_chunked_prefill_split_k_matches_reference():
    err = _attention_case([100, 37], [20, 37], group=4, block_size=16, splits=2)
    assert err < 1e-2


def test_prefill_float16_matches_reference():
    err = _attention_case([45, 30], [45, 12], group=2, block_size=16, dtype=torch.float16)
    assert err < 1e-2


def test_sequence_without_new_tokens_is_skipped():
    q, kv, meta = make_problem([12, 30, 5], [3, 0, 5], num_kv_heads=1, group=4, head_dim=32,
                               block_size=16, dtype=torch.float32, device="cpu")  # fmt: skip
    out = ops.paged_attention(q, kv, meta, 0.17)
    ref = torch_ref.paged_attention(q, kv, meta, 0.17)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rms_norm_matches_reference(dtype):
    x = torch.randn(5, 3, 96).to(dtype)  # non-power-of-two width, 3-d (per-head q/k norm)
    w = torch.randn(96).to(dtype)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), torch_ref.rms_norm(x, w, 1e-6))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_add_rms_norm_matches_reference(dtype):
    x, res, w = torch.randn(7, 64).to(dtype), torch.randn(7, 64).to(dtype), torch.randn(64)
    out, new_res = ops.add_rms_norm(x, res, w.to(dtype), 1e-5)
    ref_out, ref_res = torch_ref.add_rms_norm(x, res, w.to(dtype), 1e-5)
    # The interpreter rounds float32 -> bf16 by truncation (the GPU rounds to nearest even),
    # so only float32 is exact here; test_kernels_gpu checks bf16 bit-exactness.
    exact = dtype == torch.float32
    torch.testing.assert_close(new_res, ref_res, rtol=0 if exact else None,
                               atol=0 if exact else None)  # fmt: skip
    torch.testing.assert_close(out, ref_out)


@pytest.mark.parametrize("inplace", [False, True])
def test_rotary_on_strided_views_matches_reference(inplace):
    num_heads, num_kv_heads, head_dim = 4, 2, 32
    qkv = torch.randn(6, (num_heads + 2 * num_kv_heads) * head_dim).to(torch.bfloat16)
    q = qkv[:, : num_heads * head_dim].view(6, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim].view(6, 2, head_dim)
    positions = torch.tensor([0, 5, 9, 1, 63, 2])
    cos_sin = torch.randn(64, head_dim)
    ref_q, ref_k = torch_ref.rotary(q, k, positions, cos_sin)
    out_q, out_k = ops.rotary(q, k, positions, cos_sin, inplace=inplace)
    torch.testing.assert_close(out_q, ref_q)
    torch.testing.assert_close(out_k, ref_k)
    if inplace:
        assert out_q.data_ptr() == q.data_ptr()
        torch.testing.assert_close(q, ref_q)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_silu_mul_matches_reference(dtype):
    gate_up = torch.randn(5, 2 * 80).to(dtype)
    torch.testing.assert_close(ops.silu_mul(gate_up), torch_ref.silu_mul(gate_up))


@pytest.mark.parametrize("block_size", [16, 32])
def test_store_kv_matches_reference(block_size):
    kv = torch.randn(4, 2, block_size, 2, 32).to(torch.bfloat16)
    kv_ref = kv.clone()
    k, v = torch.randn(5, 2, 32).to(kv.dtype), torch.randn(5, 2, 32).to(kv.dtype)
    slots = torch.tensor([3, block_size * 2 + 1, block_size * 3 + block_size - 1, 0, 7])
    ops.store_kv(k, v, kv, slots)
    torch_ref.store_kv(k, v, kv_ref, slots)
    torch.testing.assert_close(kv, kv_ref, rtol=0, atol=0)


def test_store_kv_skips_negative_slots():
    kv = torch.randn(2, 2, 16, 1, 32)
    before = kv.clone()
    ops.store_kv(torch.randn(2, 1, 32), torch.randn(2, 1, 32), kv, torch.tensor([-1, 5]))
    changed = (kv != before).flatten(2).any(-1)  # [num_blocks, 2]: which block halves changed
    assert changed.tolist() == [[True, True], [False, False]]
    assert (kv[0, :, torch.arange(16) != 5] == before[0, :, torch.arange(16) != 5]).all()
