"""The Triton kernels on the GPU against torch_ref in float32, over a grid of real shapes.

Run on the device machine: `python -m pytest -m gpu tests/kernels -q`.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("poison_empty")]
if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("needs a CUDA GPU (and no TRITON_INTERPRET)", allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed")

from pdserve.model.ops import (  # noqa: E402
    get_ops,
    torch_ref,
    triton_attention,
    triton_gemv,
    triton_ops,
)
from tests.kernels.helpers import make_problem, rel_err  # noqa: E402

ops = get_ops("triton")

# (batch, max context, max new tokens per seq): decode, long decode, prefill, prefix hits.
ATTN_SHAPES = [
    (1, 1, 1),
    (1, 8192, 1),
    (7, 300, 1),
    (64, 2048, 1),
    (256, 1024, 1),
    (32, 8192, 1),
    (1, 4096, 4096),
    (5, 1000, 1000),
    (8, 3000, 200),
    (64, 600, 17),
]


def _lens(batch: int, max_ctx: int, max_new: int, seed: int) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    seq_lens = [rng.randint(1, max_ctx) for _ in range(batch)]
    seq_lens[0] = max_ctx
    q_lens = [min(s, rng.randint(1, max_new)) for s in seq_lens]
    q_lens[0] = min(seq_lens[0], max_new)
    return seq_lens, q_lens


@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=lambda s: "b{}-ctx{}-q{}".format(*s))
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("block_size", [16, 32])
def test_paged_attention_bf16_matches_reference(shape, group, block_size):
    seq_lens, q_lens = _lens(*shape, seed=hash((shape, group, block_size)) % 1000)
    num_kv_heads = 2 if group > 1 else 4
    q, kv, meta = make_problem(seq_lens, q_lens, num_kv_heads=num_kv_heads, group=group,
                               head_dim=128, block_size=block_size, dtype=torch.bfloat16,
                               device="cuda")  # fmt: skip
    out = ops.paged_attention(q, kv, meta, 128**-0.5)
    ref = torch_ref.paged_attention(q.float(), kv.float(), meta, 128**-0.5)
    assert torch.isfinite(out).all(), "some output element was never written"
    assert rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("splits", [1, 3, 16])
def test_fixed_split_count_matches_reference(splits):
    seq_lens, q_lens = _lens(48, 5000, 1, seed=splits)
    q, kv, meta = make_problem(seq_lens, q_lens, num_kv_heads=8, group=4, head_dim=128,
                               block_size=16, dtype=torch.bfloat16, device="cuda")  # fmt: skip
    out = ops.paged_attention(q, kv, meta, 0.088, num_splits=splits)
    ref = torch_ref.paged_attention(q.float(), kv.float(), meta, 0.088)
    assert rel_err(out, ref) < 1e-2


def test_float32_attention_is_near_exact():
    seq_lens, q_lens = _lens(9, 700, 60, seed=3)
    q, kv, meta = make_problem(seq_lens, q_lens, num_kv_heads=2, group=4, head_dim=64,
                               block_size=16, dtype=torch.float32, device="cuda")  # fmt: skip
    out = ops.paged_attention(q, kv, meta, 0.125)
    assert rel_err(out, torch_ref.paged_attention(q, kv, meta, 0.125)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("num_tokens", [1, 300])
def test_elementwise_ops_match_reference(dtype, num_tokens):
    hidden, inter = 4096, 14336
    x = torch.randn(num_tokens, hidden, device="cuda").to(dtype)
    res = torch.randn(num_tokens, hidden, device="cuda").to(dtype)
    w = torch.randn(hidden, device="cuda").to(dtype)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), torch_ref.rms_norm(x, w, 1e-5))
    out, new_res = ops.add_rms_norm(x, res, w, 1e-5)
    ref_out, ref_res = torch_ref.add_rms_norm(x, res, w, 1e-5)
    torch.testing.assert_close(new_res, ref_res, rtol=0, atol=0)
    torch.testing.assert_close(out, ref_out)
    gate_up = torch.randn(num_tokens, 2 * inter, device="cuda").to(dtype)
    torch.testing.assert_close(ops.silu_mul(gate_up), torch_ref.silu_mul(gate_up))
    q = torch.randn(num_tokens, 32, 128, device="cuda").to(dtype)
    k = torch.randn(num_tokens, 8, 128, device="cuda").to(dtype)
    positions = torch.randint(0, 8192, (num_tokens,), device="cuda")
    cos_sin = torch.randn(8192, 128, device="cuda")
    for got, want in zip(ops.rotary(q, k, positions, cos_sin),
                         torch_ref.rotary(q, k, positions, cos_sin)):  # fmt: skip
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("block_size", [16, 32])
def test_store_kv_matches_reference(block_size):
    kv = torch.randn(64, 2, block_size, 8, 128, device="cuda").to(torch.bfloat16)
    kv_ref = kv.clone()
    slots = torch.randperm(64 * block_size, device="cuda")[:300]
    k = torch.randn(300, 8, 128, device="cuda").to(torch.bfloat16)
    v = torch.randn(300, 8, 128, device="cuda").to(torch.bfloat16)
    ops.store_kv(k, v, kv, slots)
    torch_ref.store_kv(k, v, kv_ref, slots)
    torch.testing.assert_close(kv, kv_ref, rtol=0, atol=0)


def test_decode_is_cuda_graph_capturable():
    seq_lens, q_lens = _lens(16, 3000, 1, seed=5)
    q, kv, meta = make_problem(seq_lens, q_lens, num_kv_heads=8, group=4, head_dim=128,
                               block_size=16, dtype=torch.bfloat16, device="cuda")  # fmt: skip
    eager = ops.paged_attention(q, kv, meta, 0.088, num_splits=4)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.paged_attention(q, kv, meta, 0.088, num_splits=4)  # warm-up compiles outside
        with torch.cuda.graph(graph, stream=stream):
            out = ops.paged_attention(q, kv, meta, 0.088, num_splits=4)
    torch.cuda.current_stream().wait_stream(stream)
    # New lengths in the same tensor: the replay must follow the device values.
    meta.seq_lens.copy_(torch.where(meta.seq_lens > 7, meta.seq_lens - 7, meta.seq_lens))
    graph.replay()
    meta.seq_lens_cpu = meta.seq_lens.tolist()
    ref = torch_ref.paged_attention(q.float(), kv.float(), meta, 0.088)
    assert rel_err(out, ref) < 1e-2
    assert not torch.equal(out, eager)


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_tokens", [1, 7, 300])
def test_rotary_store_kv_matches_rotary_then_store(num_tokens, block_size):
    """The fused op on the 8B attention shape: q, k, v as views of one qkv row, some padding."""
    num_heads, num_kv_heads, head_dim = 32, 8, 128
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, device="cuda")
    q, k, v = qkv.to(torch.bfloat16).split([num_heads * head_dim, num_kv_heads * head_dim,
                                            num_kv_heads * head_dim], dim=-1)  # fmt: skip
    q = q.view(num_tokens, num_heads, head_dim)
    k, v = (t.view(num_tokens, num_kv_heads, head_dim) for t in (k, v))
    positions = torch.randint(0, 8192, (num_tokens,), device="cuda")
    cos_sin = torch.randn(8192, head_dim, device="cuda")
    kv = torch.randn(64, 2, block_size, num_kv_heads, head_dim, device="cuda").bfloat16()
    kv_ref = kv.clone()
    slots = torch.randperm(64 * block_size, device="cuda")[:num_tokens]
    slots[::5] = -1  # padding rows (CUDA-graph batches) store nothing
    ref_q = torch_ref.rotary_store_kv(q.clone(), k, v, positions, cos_sin, kv_ref, slots)
    out_q = ops.rotary_store_kv(q, k, v, positions, cos_sin, kv, slots)
    assert out_q.data_ptr() == q.data_ptr()  # in place into the qkv buffer
    torch.testing.assert_close(out_q, ref_q)
    torch.testing.assert_close(kv[:, 0], kv_ref[:, 0])
    assert torch.equal(kv[:, 1], kv_ref[:, 1])  # V is a copy


# Llama-3.1-8B's linear layers: (out, in) of qkv, o, gate_up, down, lm_head.
GEMV_SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096)]


@pytest.mark.parametrize("shape", GEMV_SHAPES, ids=lambda s: "{}x{}".format(*s))
@pytest.mark.parametrize("num_rows", [1, 2, 4, 8])
def test_gemv_matches_matmul_on_8b_shapes(shape, num_rows):
    n, k = shape
    w = (torch.randn(n, k, device="cuda") * 0.02).bfloat16()
    x = torch.randn(num_rows, k, device="cuda").bfloat16()
    out = triton_gemv.gemv(x, w)
    ref = torch.nn.functional.linear(x.float(), w.float())
    assert out.shape == (num_rows, n) and out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 1e-2
    assert rel_err(out, torch.nn.functional.linear(x, w)) < 1e-2


@pytest.mark.parametrize("num_rows", [1, 3, 8])
def test_gemv_bias_and_silu_mul_match_reference(num_rows):
    w = (torch.randn(4096, 14336, device="cuda") * 0.02).bfloat16()
    gate_up = torch.randn(num_rows, 2 * 14336, device="cuda").bfloat16()
    out = triton_gemv.gemv(gate_up, w, silu_mul=True)
    ref = torch.nn.functional.linear(torch_ref.silu_mul(gate_up.float()), w.float())
    assert rel_err(out, ref) < 1e-2
    wq = (torch.randn(1536, 1024, device="cuda") * 0.02).bfloat16()  # Qwen2-style qkv bias
    b = torch.randn(1536, device="cuda").bfloat16()
    x = torch.randn(num_rows, 1024, device="cuda").bfloat16()
    ref = torch.nn.functional.linear(x.float(), wq.float(), b.float())
    assert rel_err(triton_gemv.gemv(x, wq, b), ref) < 1e-2


@pytest.mark.parametrize("num_rows", [1, 2, 8])
def test_gemv_rotary_store_kv_matches_linear_then_rotary_store(num_rows):
    """The 8B qkv projection with rope + KV store as its epilogue, some padding slots."""
    num_heads, num_kv_heads, head_dim, block_size = 32, 8, 128, 16
    w = (torch.randn(6144, 4096, device="cuda") * 0.02).bfloat16()
    x = torch.randn(num_rows, 4096, device="cuda").bfloat16()
    positions = torch.randint(0, 8192, (num_rows,), device="cuda")
    from pdserve.model.rope import cos_sin_table

    cos_sin = cos_sin_table(head_dim, 500000.0, None, 8192).cuda()
    kv = torch.randn(64, 2, block_size, num_kv_heads, head_dim, device="cuda").bfloat16()
    kv_ref = kv.clone()
    slots = torch.randperm(64 * block_size, device="cuda")[:num_rows]
    slots[1::3] = -1
    ref_q = torch_ref.qkv_rotary_store_kv(x, w, None, positions, cos_sin, kv_ref, slots,
                                          num_heads)  # fmt: skip
    q = triton_gemv.gemv_rotary_store_kv(x, w, None, positions, cos_sin, kv, slots, num_heads)
    assert rel_err(q, ref_q) < 1e-2
    assert rel_err(kv, kv_ref) < 1e-2
    written = torch.zeros(64 * block_size, dtype=torch.bool, device="cuda")
    written[slots[slots >= 0]] = True
    flat, flat_ref = kv.transpose(1, 2).flatten(0, 1), kv_ref.transpose(1, 2).flatten(0, 1)
    assert torch.equal(flat[~written], flat_ref[~written])


@pytest.mark.parametrize("batch", [1, 64])
def test_fused_split_combine_is_race_free_over_repeats(batch):
    """The last-split-combines path, many launches back to back (a lost arrival or a stale
    partial would leave NaN from the poisoned output or a wrong row): equal to the separate
    reduce launch and to the reference every time, counters back at 0."""
    seq_lens, q_lens = _lens(batch, 640 if batch == 1 else 4000, 1, seed=batch)
    q, kv, meta = make_problem(seq_lens, q_lens, num_kv_heads=8, group=4, head_dim=128,
                               block_size=16, dtype=torch.bfloat16, device="cuda")  # fmt: skip
    ref = torch_ref.paged_attention(q.float(), kv.float(), meta, 0.088)
    triton_attention.FUSED_REDUCE = False
    try:
        separate = ops.paged_attention(q, kv, meta, 0.088, num_splits=16)
    finally:
        triton_attention.FUSED_REDUCE = True
    outs = [ops.paged_attention(q, kv, meta, 0.088, num_splits=s) for s in (2, 4, 16) * 20]
    for out in outs:
        assert rel_err(out, ref) < 1e-2
    assert rel_err(outs[-1], separate) < 1e-3
    for buffers in triton_attention._COUNTERS.values():
        assert all(int(b.abs().sum()) == 0 for b in buffers)


@pytest.mark.parametrize("shape", ["tiny-qwen2", "tiny-llama3"])
@pytest.mark.parametrize("gemv_rows", [0, 8])
def test_tiny_model_on_triton_ops_matches_torch_ref(monkeypatch, shape, gemv_rows):
    from pdserve.model.loader import load_model
    from tests.model.model_testing import PagedRunner

    monkeypatch.setattr(triton_ops, "gemv_max_rows", gemv_rows)
    logits = {}
    for name in ("torch_ref", "triton"):
        model, _ = load_model(f"dummy:{shape}", dtype=torch.bfloat16, device="cuda",
                              ops=get_ops(name))  # fmt: skip
        with torch.device("cuda"):  # the runner's cache and metadata tensors
            runner = PagedRunner(model, block_size=16)
            prefill = runner.step([(0, list(range(3, 40))), (1, [4, 4, 9])])
            decode = runner.step([(0, [11]), (1, [12])])
            decode += runner.step([(1, [13])])  # one row: the fused qkv + rope + store GEMV
        logits[name] = torch.cat([*prefill, *decode])
    assert rel_err(logits["triton"], logits["torch_ref"]) < 2e-2
