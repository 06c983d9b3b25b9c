"""Time the Triton kernels on the GPU (Llama-3.1-8B shapes); print tables, write JSON.

    python benchmarks/bench_kernels.py [--out results.json] [--quick] [--sections attn,gemv,step]
    python benchmarks/bench_kernels.py --cpu-smoke     # every code path, tiny shapes, interpreter

attn. Decode: batch 64, context 2k-8k, 32 q heads / 8 kv heads / head_dim 128, bf16. Achieved
bandwidth = (K/V bytes read + q read + out written) / median time, as a fraction of the card's
device-to-device copy bandwidth measured here (bytes read + written). A small sweep of tile
shapes / warps / stages / split counts runs first (not with --quick); the table reports default
and best configs. Prefill: one 1k and one 4k-token prompt (no cached prefix) against torch SDPA.

gemv. The 8B model's linear layers (qkv 4096->6144, o 4096->4096, gate_up 4096->28672, down
14336->4096, lm_head 4096->128256) at M = 1, 2, 4, 8 rows: cuBLAS (F.linear) against the Triton
GEMV (default config, and the best of a small sweep unless --no-gemv-sweep), as GB/s of weight
bytes and % of the copy bandwidth. Each timed call cycles through enough copies of the weight
(>= 256 MB) that L2 (50 MB) cannot hold it, as across a real model's layers.

step. One whole batch-1 decode step of the 8B model (32 layers, random bf16 weights, context
576 = a 512-token prompt + 64 generated, paged cache of block 16 sized for max_model_len 2304
as bench_gpu.py runs it), eager (host wall time per step) and replayed from a CUDA graph (GPU
time per step), for op variants: the pre-fusion ops (cuBLAS qkv, rotary as two launches +
store_kv, the separate split-K reduce launch, silu_mul + cuBLAS down), the fused ops (one rope +
store launch, the combine inside attention), the GEMV (silu folded into down), both (then rope
and the KV store are the qkv GEMV's epilogue: 7 launches a layer instead of 12), and the lm head
on the GEMV too. Logits are checked against the pre-fusion variant; torch.profiler lists each
variant's kernels per step.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests.*
if "--cpu-smoke" in sys.argv:  # must precede triton.jit: kernels run in Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from pdserve.model.ops import (  # noqa: E402
    AttentionMetadata,
    torch_ref,
    triton_attention,
    triton_gemv,
    triton_ops,
)
from pdserve.model.ops.torch_ref import split_qkv  # noqa: E402
from pdserve.model.ops.triton_attention import attention, default_num_splits  # noqa: E402
from pdserve.model.ops.triton_gemv import gemv  # noqa: E402
from tests.kernels.helpers import make_problem, rel_err  # noqa: E402

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICE = "cuda" if ON_GPU else "cpu"
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BATCH = 32, 8, 128, 64
GROUP = NUM_HEADS // NUM_KV_HEADS
DTYPE = torch.bfloat16
SCALE = HEAD_DIM**-0.5


def time_ms(fn, rep: int = 200) -> float:
    """Median GPU time of fn, replayed from a CUDA graph so host launch cost stays out (eager
    timings of the ~0.1 ms prefill varied 2x between runs with the Python launch overhead).
    On the CPU (--cpu-smoke): the wall time of one call after one warm-up call."""
    if not ON_GPU:
        fn()
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # compile and warm up outside the capture
            fn()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    return do_bench(graph.replay, warmup=25, rep=rep, return_mode="median")


def copy_bandwidth_gbps() -> float:
    src = torch.randn(2**29 if ON_GPU else 2**20, device=DEVICE, dtype=DTYPE)  # 1 GiB on GPU
    dst = torch.empty_like(src)
    if ON_GPU:
        ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300,
                                     return_mode="median")  # fmt: skip
    else:
        ms = time_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms / 1e6


def problem(seq_lens: list[int], q_lens: list[int], block_size: int):
    return make_problem(seq_lens, q_lens, num_kv_heads=NUM_KV_HEADS, group=GROUP,
                        head_dim=HEAD_DIM, block_size=block_size, dtype=DTYPE,
                        device=DEVICE)  # fmt: skip


def run_attn(q, kv, meta, splits=None, cfg=None):
    return attention(q, kv, meta.query_start_loc, meta.seq_lens, meta.block_tables,
                     meta.max_query_len, meta.max_seq_len, SCALE,
                     num_splits=splits, config=cfg)  # fmt: skip


def decode_bytes(seq_lens: list[int]) -> int:
    kv_bytes = sum(seq_lens) * NUM_KV_HEADS * HEAD_DIM * 2 * 2  # K and V, bf16
    return kv_bytes + 2 * len(seq_lens) * NUM_HEADS * HEAD_DIM * 2  # q read, out written


def sweep_decode(seq_lens: list[int]) -> tuple[dict | None, int | None, list[dict], float]:
    """Best (tile, warps, stages), then best split count, on one decode problem."""
    q, kv, meta = problem(seq_lens, [1] * len(seq_lens), 16)
    nbytes = decode_bytes(seq_lens)
    best_cfg, best_splits = None, None  # None: the module's default config
    best_ms = time_ms(lambda: run_attn(q, kv, meta))
    sweep = []
    for bn, warps, stages in itertools.product([32, 64, 128], [2, 4, 8], [2, 3, 4]):
        cfg = {"block_m": 16, "block_n": bn, "num_warps": warps, "num_stages": stages}
        try:
            ms = time_ms(lambda cfg=cfg: run_attn(q, kv, meta, cfg=cfg))
        except Exception as e:  # out of shared memory etc.
            print("skip", cfg, type(e).__name__)
            continue
        sweep.append({**cfg, "splits": None, "ms": ms, "gbps": nbytes / ms / 1e6})
        print("decode sweep", sweep[-1], flush=True)
        if ms < best_ms:
            best_ms, best_cfg = ms, cfg
    for splits in [1, 2, 3, 4, 6, 8, 16]:
        ms = time_ms(lambda s=splits: run_attn(q, kv, meta, splits=s, cfg=best_cfg))
        sweep.append({**(best_cfg or {}), "splits": splits, "ms": ms, "gbps": nbytes / ms / 1e6})
        print("decode sweep", sweep[-1], flush=True)
        if ms < best_ms:
            best_ms, best_splits = ms, splits
    ref = torch_ref.paged_attention(q.float(), kv.float(), meta, SCALE)
    err = rel_err(run_attn(q, kv, meta, splits=best_splits, cfg=best_cfg), ref)
    return best_cfg, best_splits, sweep, err


def decode_rows(name, seq_lens, block_size, best, copy_gbps, num_sms) -> list[dict]:
    q, kv, meta = problem(seq_lens, [1] * len(seq_lens), block_size)
    nbytes = decode_bytes(seq_lens)
    rows = []
    for label, splits, cfg in [("default", None, None), ("best", best[1], best[0])]:
        ms = time_ms(lambda s=splits, c=cfg: run_attn(q, kv, meta, splits=s, cfg=c))
        gbps = nbytes / ms / 1e6
        if splits is None:
            splits = default_num_splits(BATCH * NUM_KV_HEADS, max(seq_lens), num_sms)
        rows.append({"context": name, "block_size": block_size, "config": label,
                     "splits": splits, "us": ms * 1e3, "gbps": gbps,
                     "frac_copy": gbps / copy_gbps})  # fmt: skip
    return rows


def bench_prefill(length: int, tune: bool) -> dict:
    q, kv, meta = problem([length], [length], 16)
    flops = 4 * length * length / 2 * NUM_HEADS * HEAD_DIM  # QK^T and PV, causal half
    cfgs: list[dict | None] = [None]
    grid = itertools.product([64, 128], [32, 64, 128], [4, 8], [2, 3])
    if not tune:
        grid = [(64, 32, 4, 2), (64, 64, 4, 2), (128, 32, 8, 2), (128, 128, 8, 3)]
    cfgs += [{"block_m": m, "block_n": n, "num_warps": w, "num_stages": s} for m, n, w, s in grid]
    timings = []
    for cfg in cfgs:
        try:
            timings.append((time_ms(lambda c=cfg: run_attn(q, kv, meta, cfg=c)), cfg))
            print("prefill sweep", length, timings[-1], flush=True)
        except Exception as e:
            print("skip", cfg, type(e).__name__)
    ms_best, cfg_best = min(timings, key=lambda t: t[0])
    qs = q.view(1, length, NUM_HEADS, HEAD_DIM).transpose(1, 2)
    ks = torch.randn(1, NUM_KV_HEADS, length, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    vs = torch.randn_like(ks)
    ke, ve = ks.repeat_interleave(GROUP, 1), vs.repeat_interleave(GROUP, 1)
    backend = torch.nn.attention.SDPBackend.FLASH_ATTENTION if ON_GPU else None
    with torch.nn.attention.sdpa_kernel(backend or torch.nn.attention.SDPBackend.MATH):
        ms_sdpa = time_ms(lambda: F.scaled_dot_product_attention(qs, ke, ve, is_causal=True))
    return {
        "tokens": length,
        "triton_default_ms": timings[0][0],
        "triton_best_ms": ms_best,
        "best_config": cfg_best,
        "sdpa_flash_ms": ms_sdpa,
        "triton_best_tflops": flops / ms_best / 1e9,
        "sdpa_tflops": flops / ms_sdpa / 1e9,
    }


def run_attention(result: dict, quick: bool, num_sms: int, smoke: bool) -> None:
    rng = random.Random(0)
    lo, hi = (32, 96) if smoke else (2048, 8192)
    ragged = [rng.randint(lo, hi) for _ in range(BATCH)]
    best: tuple[dict | None, int | None] = (None, None)
    result["decode_sweep"] = []
    if not quick:
        cfg, splits, sweep, err = sweep_decode(ragged)
        best = (cfg, splits)
        result.update(decode_sweep=sweep, best_config_rel_err=err)
    result["decode_best"] = {**(best[0] or {"config": "default"}), "splits": best[1]}
    if smoke:
        cases = {"small": [64] * BATCH, "ragged": ragged}
    else:
        cases = {"2k": [2048] * BATCH, "4k": [4096] * BATCH, "8k": [8192] * BATCH,
                 "2k-8k": ragged}  # fmt: skip
    copy_gbps = result["copy_bandwidth_gbps"]
    result["decode"] = [
        row
        for name, lens in cases.items()
        for block_size in (16, 32)
        for row in decode_rows(name, lens, block_size, best, copy_gbps, num_sms)
    ]
    lengths = (48,) if smoke else (1024, 4096)
    result["prefill"] = [bench_prefill(n, tune=not quick) for n in lengths]


def print_attention(result: dict) -> None:
    sweep = result["decode_sweep"]
    if sweep:
        print(f"\nsweep (ragged 2k-8k, block 16): fastest 8 of {len(sweep)}")
        for s in sorted(sweep, key=lambda s: s["ms"])[:8]:
            print(f"  {s}")
    print(f"\ndecode attention, batch {BATCH}, {NUM_HEADS}q/{NUM_KV_HEADS}kv x {HEAD_DIM}, bf16")
    print("context  bs   config splits       us    GB/s  copy%")
    for r in result["decode"]:
        print(f"{r['context']:>7} {r['block_size']:>3} {r['config']:>8} {r['splits']:>6} "
              f"{r['us']:8.1f} {r['gbps']:7.0f} {100 * r['frac_copy']:6.1f}")  # fmt: skip
    print("prefill (one prompt, causal; sdpa = flash with K/V expanded to 32 heads)")
    for p in result["prefill"]:
        print(f"  {p['tokens']:>5} tok: triton default {p['triton_default_ms']:.3f} ms, best "
              f"{p['triton_best_ms']:.3f} ms ({p['triton_best_tflops']:.0f} TFLOP/s) "
              f"{p['best_config']}; sdpa {p['sdpa_flash_ms']:.3f} ms "
              f"({p['sdpa_tflops']:.0f} TFLOP/s)")  # fmt: skip
    print(
        f"best decode config {result['decode_best']}, rel err {result.get('best_config_rel_err')}"
    )


# ---- gemv: skinny linear layers at decode batch sizes -------------------------------------

GEMV_SHAPES = {  # name: (out N, in K) of Llama-3.1-8B's linear layers
    "qkv": (6144, 4096),
    "o": (4096, 4096),
    "gate_up": (28672, 4096),
    "down": (4096, 14336),
    "lm_head": (128256, 4096),
}
GEMV_ROWS = (1, 2, 4, 8)
L2_DEFEAT_BYTES = 256 * 2**20  # each timed call cycles through this many weight bytes at least


def _cfg(block_n: int, block_k: int, use_dot: int, warps: int = 4, stages: int = 4) -> dict:
    return {"block_n": block_n, "block_k": block_k, "use_dot": use_dot, "num_warps": warps,
            "num_stages": stages}  # fmt: skip


GEMV_SWEEP = [
    _cfg(8, 1024, 0), _cfg(16, 512, 0), _cfg(32, 256, 0), _cfg(16, 512, 0, 8, 3),
    _cfg(16, 256, 1), _cfg(32, 256, 1), _cfg(64, 128, 1, 4, 3),
]  # fmt: skip


def gemv_sweep_configs(num_rows: int) -> list[dict]:
    # The CUDA-core path (use_dot 0) is the one-row kernel; 2..8 rows take the tensor cores.
    return [c for c in GEMV_SWEEP if c["use_dot"] or num_rows == 1]


def _time_rotating(fn, weights: list[torch.Tensor]) -> float:
    """ms per call of fn(w), averaged over one pass through all the weight copies."""
    return time_ms(lambda: [fn(w) for w in weights], rep=100) / len(weights)


def bench_gemv_shape(name, n, k, rows, copy_gbps, num_sms, sweep, silu) -> list[dict]:
    nbytes = n * k * 2
    copies = max(1, -(-L2_DEFEAT_BYTES // nbytes)) if ON_GPU else 1
    weights = [torch.randn(n, k, device=DEVICE, dtype=DTYPE) * 0.02 for _ in range(copies)]
    out = []
    for m in rows:
        in_cols = 2 * k if silu else k
        x = torch.randn(m, in_cols, device=DEVICE, dtype=DTYPE)
        if silu:  # the MLP's activation + down projection: silu_mul then cuBLAS, or one GEMV
            x_ref = torch_ref.silu_mul(x.float())
            cublas = lambda w, x=x: F.linear(triton_ops.silu_mul(x), w)  # noqa: E731
        else:
            x_ref = x.float()
            cublas = lambda w, x=x: F.linear(x, w)  # noqa: E731
        ref = F.linear(x_ref, weights[0].float())
        cublas_ms = _time_rotating(cublas, weights)
        default = triton_gemv.default_config(m, n, k, num_sms)
        err = rel_err(gemv(x, weights[0], silu_mul=silu), ref)
        cublas_err = rel_err(cublas(weights[0]), ref)
        triton_ms = _time_rotating(lambda w, x=x: gemv(x, w, silu_mul=silu), weights)
        best_ms, best_cfg = triton_ms, default
        for cfg in gemv_sweep_configs(m) if sweep else []:
            try:
                ms = _time_rotating(lambda w, x=x, c=cfg: gemv(x, w, silu_mul=silu, config=c),
                                    weights)  # fmt: skip
            except Exception as e:  # out of shared memory / registers
                print("gemv skip", name, m, cfg, type(e).__name__, flush=True)
                continue
            if ms < best_ms:
                best_ms, best_cfg = ms, cfg
        if best_cfg is not default:
            err_best = rel_err(gemv(x, weights[0], silu_mul=silu, config=best_cfg), ref)
        else:
            err_best = err

        def bw(ms: float) -> float:
            return nbytes / ms / 1e6

        row = {
            "layer": name + ("+silu" if silu else ""), "n": n, "k": k, "rows": m,
            "weight_bytes": nbytes, "weight_copies": copies,
            "cublas_us": cublas_ms * 1e3, "cublas_gbps": bw(cublas_ms),
            "triton_us": triton_ms * 1e3, "triton_gbps": bw(triton_ms),
            "triton_config": default, "best_us": best_ms * 1e3, "best_gbps": bw(best_ms),
            "best_config": best_cfg, "copy_gbps": copy_gbps,
            "rel_err": err, "best_rel_err": err_best, "cublas_rel_err": cublas_err,
        }  # fmt: skip
        print("gemv", {k_: v for k_, v in row.items() if not k_.endswith("config")}, flush=True)
        out.append(row)
    del weights
    if ON_GPU:
        torch.cuda.empty_cache()
    return out


def run_gemv(result: dict, num_sms: int, sweep: bool, smoke: bool) -> None:
    shapes = {"qkv": (96, 64), "down": (64, 160)} if smoke else GEMV_SHAPES
    rows = (1, 2) if smoke else GEMV_ROWS
    copy_gbps = result["copy_bandwidth_gbps"]
    table = []
    for name, (n, k) in shapes.items():
        table += bench_gemv_shape(name, n, k, rows, copy_gbps, num_sms, sweep, silu=False)
        if name == "down":
            table += bench_gemv_shape(name, n, k, rows, copy_gbps, num_sms, sweep, silu=True)
    result["gemv"] = table
    result["gemv_per_step"] = gemv_per_step(table, copy_gbps)


def print_gemv(result: dict) -> None:
    copy = result["copy_bandwidth_gbps"]
    print(f"\nlinear layers at M rows: weight GB/s and % of copy bandwidth ({copy:.0f} GB/s)")
    print(
        "layer          N x K        M | cuBLAS us   GB/s   %  | triton us   GB/s   %  "
        "| best us   GB/s   %  | best config"
    )
    for r in result["gemv"]:
        c = r["best_config"]
        cfg = "n{block_n} k{block_k} dot{use_dot} w{num_warps} s{num_stages}".format(**c)
        cols = [f"{r['layer']:<12} {r['n']:>6}x{r['k']:<6} {r['rows']:>2}"]
        for kind, width in (("cublas", 8), ("triton", 8), ("best", 7)):
            gbps = r[f"{kind}_gbps"]
            cols.append(f"{r[f'{kind}_us']:{width}.1f} {gbps:6.0f} {100 * gbps / copy:4.0f}")
        print(" | ".join([*cols, cfg]))
    worst = max(r["best_rel_err"] for r in result["gemv"])
    print(f"largest rel err of the GEMV against float32: {worst:.2e}")
    for m, est in result.get("gemv_per_step", {}).items():
        print(
            f"per decode step of the 8B at M={m}: linear layers (x32, + lm_head) cuBLAS "
            f"{est['cublas_ms']:.3f} ms, triton default {est['triton_ms']:.3f} ms, best "
            f"{est['best_ms']:.3f} ms; floor {est['floor_ms']:.3f} ms at copy bandwidth"
        )


# Per decode step: each layer's qkv, o, gate_up and (silu +) down, and the lm head once.
STEP_LAYERS = {"qkv": 32, "o": 32, "gate_up": 32, "down+silu": 32, "lm_head": 1}


def gemv_per_step(rows: list[dict], copy_gbps: float) -> dict:
    """Linear-layer time of one 8B decode step, from the per-layer rows (full shapes only)."""
    out = {}
    for m in sorted({r["rows"] for r in rows}):
        sel = {r["layer"]: r for r in rows if r["rows"] == m}
        if not set(STEP_LAYERS) <= set(sel):
            continue
        total = {"cublas_ms": 0.0, "triton_ms": 0.0, "best_ms": 0.0, "floor_ms": 0.0}
        for layer, count in STEP_LAYERS.items():
            r = sel[layer]
            for kind in ("cublas", "triton", "best"):
                total[f"{kind}_ms"] += count * r[f"{kind}_us"] / 1e3
            total["floor_ms"] += count * r["weight_bytes"] / copy_gbps / 1e6
        out[m] = total
    return out


# ---- step: one batch-1 decode step of the 8B model -------------------------------------------


class VariantOps:
    """The triton bundle with one variant's choices; paged attention at a fixed split count, as
    the engine's decode graphs run it. `fused=False` is the pre-fusion op sequence."""

    def __init__(self, num_splits: int, fused: bool) -> None:
        self.num_splits = num_splits
        self.fused = fused

    def __getattr__(self, name: str):
        return getattr(triton_ops, name)

    def paged_attention(self, q, kv_cache, meta, scale):
        return triton_ops.paged_attention(q, kv_cache, meta, scale, num_splits=self.num_splits)

    def rotary_store_kv(self, q, k, v, positions, cos_sin, kv_cache, slot_mapping):
        if self.fused:
            return triton_ops.rotary_store_kv(q, k, v, positions, cos_sin, kv_cache, slot_mapping)
        q, k = triton_ops.rotary(q, k, positions, cos_sin)
        triton_ops.store_kv(k, v, kv_cache, slot_mapping)
        return q

    def qkv_rotary_store_kv(self, hidden, w, b, positions, cos_sin, kv_cache, slot_mapping, heads):
        if self.fused:  # on the GEMV path: one launch; else cuBLAS + fused rope/store
            return triton_ops.qkv_rotary_store_kv(
                hidden, w, b, positions, cos_sin, kv_cache, slot_mapping, heads
            )
        num_kv_heads, head_dim = kv_cache.shape[-2:]
        q, k, v = split_qkv(triton_ops.linear(hidden, w, b), heads, num_kv_heads, head_dim)
        return self.rotary_store_kv(q, k, v, positions, cos_sin, kv_cache, slot_mapping)


# name: (fused rope+store and split combine, GEMV for M <= 8, lm head on the GEMV, splits or
# None for the engine's choice)
STEP_VARIANTS = {
    "pre-fusion": (False, False, False, None),
    "fused": (True, False, False, None),
    "gemv": (False, True, False, None),
    "fused+gemv": (True, True, False, None),
    "fused+gemv+lm_head": (True, True, True, None),
    "fused, 1 split": (True, False, False, 1),
    "fused+gemv+lm_head, 1 split": (True, True, True, 1),
}


def engine_num_splits(num_kv_heads: int, max_seq_len: int, num_sms: int) -> int:
    """The split count engine/cuda_graph.py gives the batch-1 graph (snapped to 1, 4, 16)."""
    want = default_num_splits(num_kv_heads, max_seq_len, num_sms)
    return max(s for s in (1, 4, 16) if s <= want)


def _step_inputs(cfg, context: int, max_model_len: int, block_size: int):
    """kv cache [L, blocks, 2, bs, KV, D] (random), one decode token at position context - 1."""
    max_blocks = max_model_len // block_size
    num_blocks = max_blocks + 1
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    kv_cache = torch.randn((cfg.num_layers, num_blocks, 2, block_size, cfg.num_kv_heads,
                            cfg.head_dim), generator=gen, device=DEVICE, dtype=DTYPE)  # fmt: skip
    table = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(0))[:max_blocks]
    pos = context - 1
    slot = int(table[pos // block_size]) * block_size + pos % block_size
    meta = AttentionMetadata(
        slot_mapping=torch.tensor([slot], dtype=torch.int64, device=DEVICE),
        query_start_loc=torch.tensor([0, 1], dtype=torch.int32, device=DEVICE),
        seq_lens=torch.tensor([context], dtype=torch.int32, device=DEVICE),
        block_tables=table.to(torch.int32).view(1, -1).to(DEVICE),
        max_query_len=1,
        max_seq_len=max_model_len,  # as the engine's graphs: the longest context they replay
        query_start_loc_cpu=[0, 1],
        seq_lens_cpu=[context],
    )
    ids = torch.tensor([1234 % cfg.vocab_size], dtype=torch.int64, device=DEVICE)
    positions = torch.tensor([pos], dtype=torch.int64, device=DEVICE)
    return kv_cache, meta, ids, positions


def _kernel_profile(fn, num_steps: int = 3) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(num_steps):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", 0.0) or getattr(e, "cuda_time_total", 0.0)
        if us > 0:
            rows.append({"name": e.key[:120], "launches_per_step": e.count / num_steps,
                         "us_per_step": us / num_steps})  # fmt: skip
    rows.sort(key=lambda r: -r["us_per_step"])
    return {
        "gpu_us_per_step": sum(r["us_per_step"] for r in rows),
        "launches_per_step": sum(r["launches_per_step"] for r in rows),
        "kernels": rows[:16],
    }


def run_step(result: dict, num_sms: int, smoke: bool, profile: bool) -> None:
    from pdserve.model.loader import load_model

    shape, context, max_model_len, block_size = (
        ("tiny-llama3", 40, 128, 16) if smoke else ("llama-3.1-8b", 576, 2304, 16)
    )
    t0 = time.perf_counter()
    model, cfg = load_model(f"dummy:{shape}", dtype=DTYPE, device=DEVICE, ops=triton_ops)
    kv_cache, meta, ids, positions = _step_inputs(cfg, context, max_model_len, block_size)
    print(f"step: {shape} loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weight_bytes -= model.model.embed_tokens.weight.numel() * 2  # one row read, not the table
    if cfg.tie_word_embeddings:
        weight_bytes += model.lm_head_weight.numel() * 2
    engine_splits = engine_num_splits(cfg.num_kv_heads, max_model_len, num_sms)
    if smoke:
        engine_splits = 4  # the interpreter's "4 SMs" pick 1: take the split-K paths anyway
    rows, base_logits = [], None
    try:
        for name, (fused, use_gemv, lm_gemv, splits) in STEP_VARIANTS.items():
            splits = engine_splits if splits is None else splits
            triton_attention.FUSED_REDUCE = fused
            triton_ops.gemv_max_rows = 8 if use_gemv else 0
            model.set_ops(VariantOps(splits, fused))
            weight = model.lm_head_weight

            def step(weight=weight, lm_gemv=lm_gemv):
                hidden = model(ids, positions, kv_cache, meta)
                logits = gemv(hidden, weight) if lm_gemv else F.linear(hidden, weight)
                return logits.float()

            with torch.inference_mode():
                logits = step()
                if base_logits is None:
                    base_logits = logits
                n_eager = 2 if smoke else 20
                if ON_GPU:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(n_eager):
                    step()
                if ON_GPU:
                    torch.cuda.synchronize()
                eager_ms = (time.perf_counter() - start) * 1e3 / n_eager
                graph_ms, graph_error = None, None
                if ON_GPU:
                    try:
                        graph_ms = time_ms(step, rep=300)
                    except Exception as e:  # keep the eager numbers of this variant
                        graph_error = repr(e)
                        print("graph capture failed:", graph_error, flush=True)
                prof = None
                if ON_GPU and profile:
                    try:
                        graph = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(graph):
                            step()
                        prof = _kernel_profile(graph.replay)
                        del graph
                    except Exception as e:  # the profile is a bonus: never lose the timings
                        print("profile failed:", repr(e), flush=True)
            row = {
                "variant": name, "num_splits": splits, "fused": fused, "gemv": use_gemv,
                "lm_head_gemv": lm_gemv, "eager_ms": eager_ms, "graph_ms": graph_ms,
                "graph_error": graph_error,
                "graph_weight_gbps": weight_bytes / graph_ms / 1e6 if graph_ms else None,
                "logits_rel_err_vs_pre_fusion": rel_err(logits, base_logits),
                "same_argmax_as_pre_fusion": bool(logits.argmax() == base_logits.argmax()),
                "profile": prof,
            }  # fmt: skip
            print("step", {k: v for k, v in row.items() if k != "profile"}, flush=True)
            rows.append(row)
    finally:
        triton_attention.FUSED_REDUCE = True
        triton_ops.gemv_max_rows = 0
    result["step"] = {
        "model": shape, "context": context, "max_model_len": max_model_len,
        "block_size": block_size, "weight_bytes": weight_bytes, "variants": rows,
    }  # fmt: skip


def print_step(result: dict) -> None:
    step = result["step"]
    copy = result["copy_bandwidth_gbps"]
    floor_ms = step["weight_bytes"] / copy / 1e6
    print(
        f"\none decode step, batch 1, {step['model']}, context {step['context']} "
        f"(weights {step['weight_bytes'] / 1e9:.2f} GB: {floor_ms:.2f} ms at copy bandwidth)"
    )
    print("variant                      splits  graph ms  eager ms  launches  kernel ms"
          "  rel err  argmax")  # fmt: skip
    for r in step["variants"]:
        prof = r["profile"] or {}
        graph = f"{r['graph_ms']:8.3f}" if r["graph_ms"] else "       -"
        launches = prof.get("launches_per_step")
        kernel_ms = prof.get("gpu_us_per_step")
        print(
            f"{r['variant']:<28} {r['num_splits']:>6} {graph} {r['eager_ms']:9.2f} "
            f"{launches if launches is not None else '-':>9} "
            f"{kernel_ms / 1e3 if kernel_ms else float('nan'):10.3f} "
            f"{r['logits_rel_err_vs_pre_fusion']:8.1e} {r['same_argmax_as_pre_fusion']!s:>6}"
        )
    for r in step["variants"]:
        if r["profile"]:
            print(f"kernels per step, {r['variant']}:")
            for k in r["profile"]["kernels"][:12]:
                print(
                    f"  {k['us_per_step']:8.1f} us {k['launches_per_step']:5.1f}x  {k['name'][:90]}"
                )


# ---- main --------------------------------------------------------------------------------


def _commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or None  # fmt: skip
    except Exception:
        return None


def main() -> None:
    global BATCH
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true",
                        help="attention: no decode sweep, 4 prefill configs")  # fmt: skip
    parser.add_argument("--no-gemv-sweep", action="store_true")
    parser.add_argument("--no-profile", action="store_true", help="step: no torch.profiler")
    parser.add_argument("--sections", default="attn,gemv,step")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny shapes on the CPU through Triton's interpreter")  # fmt: skip
    args = parser.parse_args()
    smoke = args.cpu_smoke
    if not ON_GPU and not smoke:
        parser.error("no CUDA GPU here: use --cpu-smoke")
    if smoke:
        BATCH = 2
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - {"attn", "gemv", "step"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count if ON_GPU else 4
    result = {
        "card": torch.cuda.get_device_name() if ON_GPU else "cpu (interpreter smoke run)",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "copy_bandwidth_gbps": copy_bandwidth_gbps(),
        "errors": {},
    }
    out_path = args.out or os.path.join(os.environ.get("OUT", "."), "bench_kernels.json")
    runners = {
        "attn": (
            lambda: run_attention(result, args.quick or smoke, num_sms, smoke),
            print_attention,
        ),
        "gemv": (lambda: run_gemv(result, num_sms, not args.no_gemv_sweep, smoke), print_gemv),
        "step": (lambda: run_step(result, num_sms, smoke, not args.no_profile), print_step),
    }
    done = []
    for section in sections:
        start = time.perf_counter()
        try:
            runners[section][0]()
            done.append(section)
        except Exception as e:  # record it and go on: the other sections' numbers still count
            import traceback

            traceback.print_exc()
            result["errors"][section] = repr(e)
        result.setdefault("section_s", {})[section] = time.perf_counter() - start
        print(f"section {section}: {result['section_s'][section]:.0f} s", flush=True)
        with open(out_path, "w") as f:  # after each section: a timeout keeps what was done
            json.dump(result, f, indent=1)
    print(
        f"\n{result['card']} {result['date']} commit {result['commit']}  "
        f"copy {result['copy_bandwidth_gbps']:.0f} GB/s"
    )
    for section in done:
        runners[section][1](result)
    if result["errors"]:
        print("errors:", result["errors"])
    print(f"json: {out_path}")
    if result["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
