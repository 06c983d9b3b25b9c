"""Time the Triton paged-attention kernels on the GPU (Llama-3.1-8B attention shape).

    python benchmarks/bench_kernels.py [--out results.json] [--quick]

Decode: batch 64, context 2k-8k, 32 q heads / 8 kv heads / head_dim 128, bf16. Achieved
bandwidth = (K/V bytes read + q read + out written) / median time, as a fraction of the card's
device-to-device copy bandwidth measured here (bytes read + written). A small sweep of tile
shapes / warps / stages / split counts runs first; the table reports default and best configs.
Prefill: one 1k and one 4k-token prompt (no cached prefix) against torch SDPA (flash, causal).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import random

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from pdserve.model.ops import torch_ref
from pdserve.model.ops.triton_attention import attention, default_num_splits
from tests.kernels.helpers import make_problem, rel_err

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BATCH = 32, 8, 128, 64
GROUP = NUM_HEADS // NUM_KV_HEADS
DTYPE = torch.bfloat16
SCALE = HEAD_DIM**-0.5


def time_ms(fn) -> float:
    """Median GPU time of fn, replayed from a CUDA graph so host launch cost stays out (eager
    timings of the ~0.1 ms prefill varied 2x between runs with the Python launch overhead)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # compile and warm up outside the capture
            fn()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    return do_bench(graph.replay, warmup=25, rep=200, return_mode="median")


def copy_bandwidth_gbps() -> float:
    src = torch.randn(2**29, device="cuda", dtype=DTYPE)  # 1 GiB
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * src.element_size() / ms / 1e6


def problem(seq_lens: list[int], q_lens: list[int], block_size: int):
    return make_problem(seq_lens, q_lens, num_kv_heads=NUM_KV_HEADS, group=GROUP,
                        head_dim=HEAD_DIM, block_size=block_size, dtype=DTYPE,
                        device="cuda")  # fmt: skip


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
    ks = torch.randn(1, NUM_KV_HEADS, length, HEAD_DIM, device="cuda", dtype=DTYPE)
    vs = torch.randn_like(ks)
    ke, ve = ks.repeat_interleave(GROUP, 1), vs.repeat_interleave(GROUP, 1)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
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


def print_tables(result: dict) -> None:
    sweep = result["decode_sweep"]
    print(f"\nsweep (ragged 2k-8k, block 16): fastest 8 of {len(sweep)}")
    for s in sorted(sweep, key=lambda s: s["ms"])[:8]:
        print(f"  {s}")
    print(f"\n{result['card']} {result['date']}  copy {result['copy_bandwidth_gbps']:.0f} GB/s")
    print(f"decode, batch {BATCH}, {NUM_HEADS}q/{NUM_KV_HEADS}kv x {HEAD_DIM}, bf16")
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true", help="no decode sweep, 4 prefill configs")
    args = parser.parse_args()
    rng = random.Random(0)
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    result = {
        "card": torch.cuda.get_device_name(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "copy_bandwidth_gbps": copy_bandwidth_gbps(),
    }
    ragged = [rng.randint(2048, 8192) for _ in range(BATCH)]
    best: tuple[dict | None, int | None] = (None, None)
    result["decode_sweep"] = []
    if not args.quick:
        cfg, splits, sweep, err = sweep_decode(ragged)
        best = (cfg, splits)
        result.update(decode_sweep=sweep, best_config_rel_err=err)
    result["decode_best"] = {**(best[0] or {"config": "default"}), "splits": best[1]}
    cases = {"2k": [2048] * BATCH, "4k": [4096] * BATCH, "8k": [8192] * BATCH, "2k-8k": ragged}
    result["decode"] = [
        row
        for name, lens in cases.items()
        for block_size in (16, 32)
        for row in decode_rows(name, lens, block_size, best, result["copy_bandwidth_gbps"], num_sms)
    ]
    result["prefill"] = [bench_prefill(n, tune=not args.quick) for n in (1024, 4096)]
    out_path = args.out or os.path.join(os.environ.get("OUT", "."), "bench_kernels.json")
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    print_tables(result)
    print(
        f"best decode config {result['decode_best']}, rel err {result.get('best_config_rel_err')}"
    )
    print(f"json: {out_path}")


if __name__ == "__main__":
    main()
