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

from pdserve.model.ops import (  # noqa: E402
    get_ops,
    torch_ref,
    triton_attention,
    triton_gemv,
    triton_ops,
)
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


def _qkv_views(num_tokens, num_heads, num_kv_heads, head_dim, dtype, seed=0):
    """q, k, v as strided views of one [T, (H + 2 KV) * D] projection output (as in the model)."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=gen)
    q, k, v = qkv.to(dtype).split([num_heads * head_dim, num_kv_heads * head_dim,
                                   num_kv_heads * head_dim], dim=-1)  # fmt: skip
    return (q.view(num_tokens, num_heads, head_dim), k.view(num_tokens, num_kv_heads, head_dim),
            v.view(num_tokens, num_kv_heads, head_dim))  # fmt: skip


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("group", [1, 4])
def test_rotary_store_kv_float32_equals_rotary_then_store(inplace, group):
    num_kv_heads, head_dim, block_size = 2, 32, 16
    q, k, v = _qkv_views(6, num_kv_heads * group, num_kv_heads, head_dim, torch.float32)
    positions = torch.tensor([0, 5, 9, 1, 63, 2])
    cos_sin = torch.randn(64, head_dim)
    kv = torch.randn(4, 2, block_size, num_kv_heads, head_dim)
    kv_ref = kv.clone()
    slots = torch.tensor([3, 2 * block_size + 1, -1, 4 * block_size - 1, 0, 17])  # -1: padding
    ref_q = torch_ref.rotary_store_kv(q, k, v, positions, cos_sin, kv_ref, slots)
    q_in = q.clone()
    out_q = ops.rotary_store_kv(q_in, k, v, positions, cos_sin, kv, slots, inplace=inplace)
    torch.testing.assert_close(out_q, ref_q, rtol=0, atol=0)
    torch.testing.assert_close(kv, kv_ref, rtol=0, atol=0)
    assert (out_q.data_ptr() == q_in.data_ptr()) == inplace


def test_rotary_store_kv_bf16_matches_reference():
    q, k, v = _qkv_views(5, 8, 2, 64, torch.bfloat16, seed=1)
    positions = torch.tensor([7, 0, 31, 30, 12])
    cos_sin = torch.randn(32, 64)
    kv = torch.randn(3, 2, 32, 2, 64).to(torch.bfloat16)
    kv_ref = kv.clone()
    slots = torch.tensor([0, 95, 33, -1, 64])
    ref_q = torch_ref.rotary_store_kv(q, k, v, positions, cos_sin, kv_ref, slots)
    out_q = ops.rotary_store_kv(q, k, v, positions, cos_sin, kv, slots, inplace=False)
    torch.testing.assert_close(out_q, ref_q)
    torch.testing.assert_close(kv, kv_ref)
    # The V half is a copy: bit-exact even in the interpreter.
    assert torch.equal(kv[:, 1], kv_ref[:, 1])


def test_rotary_store_kv_padding_slot_stores_nothing():
    q, k, v = _qkv_views(2, 4, 1, 32, torch.float32, seed=2)
    kv = torch.randn(2, 2, 16, 1, 32)
    before = kv.clone()
    ops.rotary_store_kv(q, k, v, torch.tensor([3, 4]), torch.randn(8, 32), kv,
                        torch.tensor([-1, 21]))  # fmt: skip
    changed = (kv != before).flatten(2).any(-1)  # [num_blocks, 2]: which block halves changed
    assert changed.tolist() == [[False, False], [True, True]]
    assert (kv[1, :, torch.arange(16) != 5] == before[1, :, torch.arange(16) != 5]).all()


# GEMV: small tiles force several programs, K steps and ragged edges on small shapes.
_GEMV_SMALL = {"block_n": 16, "block_k": 64, "num_warps": 4, "num_stages": 2}


@pytest.mark.parametrize("use_dot", [0, 1])
@pytest.mark.parametrize("num_rows", [1, 3, 8])
def test_gemv_matches_matmul(num_rows, use_dot):
    gen = torch.Generator().manual_seed(num_rows)
    x = torch.randn(num_rows, 200, generator=gen).to(torch.bfloat16)  # K, N not tile multiples
    w = torch.randn(100, 200, generator=gen).to(torch.bfloat16)
    b = torch.randn(100, generator=gen).to(torch.bfloat16)
    out = triton_gemv.gemv(x, w, b, config={**_GEMV_SMALL, "use_dot": use_dot})
    ref = torch.nn.functional.linear(x.float(), w.float(), b.float())
    assert out.dtype == torch.bfloat16 and out.shape == (num_rows, 100)
    assert rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("num_rows", [1, 5])
def test_gemv_default_config_float32_is_near_exact(num_rows):
    gen = torch.Generator().manual_seed(7)
    x, w = torch.randn(num_rows, 96, generator=gen), torch.randn(256, 96, generator=gen)
    out = triton_gemv.gemv(x, w)
    assert rel_err(out, torch.nn.functional.linear(x, w)) < 1e-5


def test_gemv_silu_mul_matches_silu_then_matmul():
    gen = torch.Generator().manual_seed(3)
    gate_up = torch.randn(2, 2 * 160, generator=gen).to(torch.bfloat16)
    w = torch.randn(48, 160, generator=gen).to(torch.bfloat16)
    out = triton_gemv.gemv(gate_up, w, silu_mul=True, config={**_GEMV_SMALL, "use_dot": 1})
    ref = torch.nn.functional.linear(torch_ref.silu_mul(gate_up.float()), w.float())
    assert rel_err(out, ref) < 1e-2


def test_linear_takes_gemv_only_up_to_max_rows(monkeypatch):
    calls = []
    real_gemv = triton_ops.gemv
    monkeypatch.setattr(triton_ops, "gemv", lambda *a, **kw: calls.append(a[0].shape[0])
                        or real_gemv(*a, **kw))  # fmt: skip
    monkeypatch.setattr(triton_ops, "gemv_max_rows", 8)
    w = torch.randn(32, 64).to(torch.bfloat16)
    for rows in (1, 8, 9):
        x = torch.randn(rows, 64).to(torch.bfloat16)
        out = ops.linear(x, w)
        assert rel_err(out, torch.nn.functional.linear(x.float(), w.float())) < 1e-2
    ops.linear(torch.randn(2, 64), torch.randn(32, 64))  # float32: cuBLAS / CPU matmul
    ops.silu_mul_linear(torch.randn(4, 128).to(torch.bfloat16), w)
    assert calls == [1, 8, 4]
    monkeypatch.setattr(triton_ops, "gemv_max_rows", 0)
    x = torch.randn(1, 64).to(torch.bfloat16)
    assert torch.equal(ops.linear(x, w), torch.nn.functional.linear(x, w))
    assert calls == [1, 8, 4]


@pytest.mark.parametrize("gemv_rows", [0, 8])
def test_tiny_model_on_triton_ops_matches_torch_ref(monkeypatch, gemv_rows):
    """The model's call sites on the Triton bundle (fused rope + store, GEMV, silu + down) give
    torch_ref's logits: a 6-token prefill and a 2-sequence decode step, bf16, attention bias."""
    from pdserve.model.loader import load_model
    from tests.model.model_testing import PagedRunner

    monkeypatch.setattr(triton_ops, "gemv_max_rows", gemv_rows)
    logits = {}
    for name in ("torch_ref", "triton"):
        model, _ = load_model("dummy:tiny-qwen2", dtype=torch.bfloat16, ops=get_ops(name))
        runner = PagedRunner(model, block_size=16)
        prefill = runner.step([(0, [5, 9, 2, 7, 1, 3]), (1, [4, 4])])
        decode = runner.step([(0, [11]), (1, [12])])
        decode += runner.step([(1, [13])])  # one row: the fused qkv + rope + store GEMV
        logits[name] = torch.cat([*prefill, *decode])
    assert rel_err(logits["triton"], logits["torch_ref"]) < 2e-2


@pytest.mark.parametrize("fused", [True, False])
def test_split_k_combine_fused_or_separate_matches_reference(monkeypatch, fused):
    # Decode and a chunked-prefill tile, 4 splits (one empty for the 3-token context).
    monkeypatch.setattr(triton_attention, "FUSED_REDUCE", fused)
    err = _attention_case([3, 90, 41], [1, 1, 8], group=4, block_size=16, splits=4)
    assert err < 1e-2


def test_fused_combine_leaves_counters_at_zero():
    # The counters are reused by the next launch (and by CUDA-graph replays): all back to 0.
    _attention_case([70, 5], [1, 1], group=2, block_size=16, splits=4)
    buffers = [b for bufs in triton_attention._COUNTERS.values() for b in bufs]
    assert buffers and all(int(b.abs().sum()) == 0 for b in buffers)
    err = _attention_case([70, 5], [1, 1], group=2, block_size=16, splits=4)
    assert err < 1e-2


@pytest.mark.parametrize("num_rows", [1, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gemv_rotary_store_kv_matches_linear_then_rotary_store(num_rows, dtype):
    """qkv projection (with bias) + rope + KV store in one kernel, GQA, a padding slot."""
    num_heads, num_kv_heads, head_dim, hidden, block_size = 4, 2, 64, 96, 16
    gen = torch.Generator().manual_seed(num_rows)
    x = torch.randn(num_rows, hidden, generator=gen).to(dtype)
    w = (torch.randn((num_heads + 2 * num_kv_heads) * head_dim, hidden, generator=gen) / 8).to(
        dtype
    )
    b = torch.randn(w.shape[0], generator=gen).to(dtype)
    positions = torch.tensor([5, 0, 17][:num_rows])
    cos_sin = torch.randn(32, head_dim, generator=gen)
    kv = torch.randn(3, 2, block_size, num_kv_heads, head_dim, generator=gen).to(dtype)
    kv_ref = kv.clone()
    slots = torch.tensor([33, -1, 2][:num_rows])
    ref_q = torch_ref.qkv_rotary_store_kv(x, w, b, positions, cos_sin, kv_ref, slots, num_heads)
    out_q = triton_gemv.gemv_rotary_store_kv(x, w, b, positions, cos_sin, kv, slots, num_heads)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert out_q.shape == (num_rows, num_heads, head_dim)
    assert rel_err(out_q, ref_q) < tol
    assert rel_err(kv, kv_ref) < tol
    untouched = torch.ones(3 * block_size, dtype=torch.bool)
    untouched[slots[slots >= 0]] = False
    flat, flat_ref = kv.transpose(1, 2).flatten(0, 1), kv_ref.transpose(1, 2).flatten(0, 1)
    assert torch.equal(flat[untouched], flat_ref[untouched])  # other slots (and -1) untouched


def test_qkv_rotary_store_kv_takes_the_fused_kernel_on_the_gemv_path(monkeypatch):
    calls = []
    real = triton_ops.gemv_rotary_store_kv
    monkeypatch.setattr(triton_ops, "gemv_rotary_store_kv",
                        lambda *a, **kw: calls.append(a[0].shape[0]) or real(*a, **kw))  # fmt: skip
    w = torch.randn(8 * 64, 32).to(torch.bfloat16)  # 4 q heads, 2 kv heads of 64
    cos_sin = torch.randn(16, 64)
    for gemv_rows, num_rows in ((8, 1), (8, 9), (0, 1)):
        monkeypatch.setattr(triton_ops, "gemv_max_rows", gemv_rows)
        x = torch.randn(num_rows, 32).to(torch.bfloat16)
        kv, kv_ref = torch.zeros(2, 2, 16, 2, 64).to(torch.bfloat16), torch.zeros(2, 2, 16, 2, 64)
        slots = torch.arange(num_rows)
        positions = torch.arange(num_rows)
        q = ops.qkv_rotary_store_kv(x, w, None, positions, cos_sin, kv, slots, 4)
        ref = torch_ref.qkv_rotary_store_kv(x.float(), w.float(), None, positions, cos_sin,
                                            kv_ref, slots, 4)  # fmt: skip
        assert rel_err(q, ref) < 2e-2 and rel_err(kv, kv_ref) < 2e-2
    assert calls == [1]
