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

from pdserve.model.ops import get_ops, torch_ref  # noqa: E402
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
