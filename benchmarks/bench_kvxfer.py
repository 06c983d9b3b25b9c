"""KV transfer throughput between two processes for one 1k-token Llama-3.1-8B-shaped request:
32 layers x 64 blocks of 16 tokens x (K, V) x 8 kv heads x 128 x bf16 = 128 MiB, moved from
blocks 0..63 of the sender's cache into blocks 64..127 of the receiver's (one run: one 4 MiB
descriptor per layer).

    .venv/bin/python benchmarks/bench_kvxfer.py [--iters 10] [--out results/bench_kvxfer.json]

CPU (always): NIXL (UCX) into the receiver's cache vs a raw memcpy (torch copy_, one thread)
from this process into the same receiver memory (shared memory), per descriptor and as one copy.
GPU (2+ GPUs): CUDA IPC cuda:0 -> cuda:1 (memcpy per descriptor, strided kernel, layer by
layer) and NIXL on VRAM, vs a plain cuda:0 -> cuda:1 copy of 128 MiB in one process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import time

import torch

from pdserve.kvxfer import TransferSpec, TransferStatus, make_transport, wait_all

NUM_LAYERS, BLOCK_SIZE, KV_HEADS, HEAD_DIM = 32, 16, 8, 128
REQ_BLOCKS = 64  # 1024 tokens
NUM_BLOCKS = 2 * REQ_BLOCKS  # each cache: 256 MiB
SRC_IDS, DST_IDS = list(range(REQ_BLOCKS)), list(range(REQ_BLOCKS, 2 * REQ_BLOCKS))


def make_cache(device: str) -> torch.Tensor:
    # [num_layers, num_blocks, 2, block_size, kv_heads, head_dim] bf16
    shape = (NUM_LAYERS, NUM_BLOCKS, 2, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    return torch.zeros(shape, dtype=torch.bfloat16, device=device)


def receiver(conn, device: str, kinds: list[str]) -> None:
    """The decode side: registers one cache with every transport in `kinds`; answers
    ("checksum",) with the float sum of the request's destination blocks, ("stop",)."""
    cache = make_cache(device)
    if device == "cpu":
        cache.share_memory_()
    transports, metadata = {}, {}
    for kind in kinds:
        try:
            transports[kind] = make_transport(kind, f"decode-{kind}")
            metadata[kind] = transports[kind].register(cache)
        except Exception as exc:  # reported as that row's error
            metadata[kind] = repr(exc)
    conn.send((metadata, cache if device == "cpu" else None))
    while conn.recv()[0] != "stop":
        conn.send(checksum(cache[:, REQ_BLOCKS:]))
    conn.send(True)


def checksum(blocks: torch.Tensor) -> int:
    """Exact: the sum of the bf16 bit patterns as integers (a float sum depends on order)."""
    return int(blocks.contiguous().view(torch.int16).to(torch.int64).sum())


def timed(fn, iters: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def row(what: str, times: list[float], nbytes: int, **extra) -> dict:
    best, median = min(times), statistics.median(times)
    return dict(what=what, gbps_median=round(nbytes / median / 1e9, 2),
                gbps_best=round(nbytes / best / 1e9, 2), ms_median=round(median * 1e3, 3),
                **extra)  # fmt: skip


def transfer_fn(transport, peer: str, per_layer: bool):
    def run() -> None:
        if per_layer:  # what a runner streaming layer by layer does
            specs = [TransferSpec("r", peer, SRC_IDS, DST_IDS, i, i + 1) for i in range(NUM_LAYERS)]
        else:
            specs = [TransferSpec("r", peer, SRC_IDS, DST_IDS)]
        statuses = wait_all(transport, [transport.send(s) for s in specs])
        if any(s is not TransferStatus.DONE for s in statuses):
            raise RuntimeError(f"transfer failed: {statuses}")

    return run


def measure_transports(device, kinds, variants, conn, metadata, src, iters) -> list[dict]:
    rows = []
    nbytes = NUM_LAYERS * REQ_BLOCKS * src[0, 0].numel() * src.element_size()
    for kind in kinds:
        if isinstance(metadata[kind], str):
            rows.append(dict(what=f"{kind} ({device})", error=metadata[kind]))
            continue
        for label, options, per_layer in variants[kind]:
            try:
                transport = make_transport(kind, f"prefill-{kind}-{label}", **options)
                transport.register(src)
                peer = transport.add_peer(metadata[kind])
                times = timed(transfer_fn(transport, peer, per_layer), iters)
                conn.send(("checksum",))
                ok = conn.recv() == checksum(src[:, :REQ_BLOCKS])
                r = row(f"{kind} {label}", times, nbytes, bytes_ok=ok)
                r["descriptors_per_request"] = transport.stats.num_descriptors // (iters + 2)
                transport.close()
            except Exception as exc:
                r = dict(what=f"{kind} {label}", error=repr(exc))
            rows.append(r)
            print(json.dumps(r), flush=True)
    return rows


def start_receiver(device: str, kinds: list[str]):
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    process = ctx.Process(target=receiver, args=(there, device, kinds), daemon=True)
    process.start()
    return here, process


def cpu_section(iters: int) -> list[dict]:
    torch.set_num_threads(1)  # the raw memcpy reference is one thread, like UCX's copy
    conn, process = start_receiver("cpu", ["nixl"])
    metadata, remote = conn.recv()  # remote: the receiver's cache, mapped here (shared memory)
    src = make_cache("cpu").normal_()
    nbytes = NUM_LAYERS * REQ_BLOCKS * src[0, 0].numel() * 2

    def memcpy_per_descriptor() -> None:
        for layer in range(NUM_LAYERS):
            remote[layer, REQ_BLOCKS:].copy_(src[layer, :REQ_BLOCKS])

    flat_src, flat_dst = src.view(-1)[: nbytes // 2], remote.view(-1)[nbytes // 2 : nbytes]
    rows = [
        row("memcpy 32 x 4 MiB (shm)", timed(memcpy_per_descriptor, iters), nbytes),
        row("memcpy 1 x 128 MiB (shm)", timed(lambda: flat_dst.copy_(flat_src), iters), nbytes),
    ]
    for r in rows:
        print(json.dumps(r), flush=True)
    variants = {
        "nixl": [
            ("request", {}, False),
            ("request, no progress thread", {"progress_thread": False}, False),
            ("layer-by-layer", {}, True),
            ("layer-by-layer, no progress thread", {"progress_thread": False}, True),
        ]
    }
    rows += measure_transports("cpu", ["nixl"], variants, conn, metadata, src, iters)
    conn.send(("stop",))
    conn.recv()
    process.join(10)
    raw = max(r["gbps_median"] for r in rows[:2])
    for r in rows[2:]:
        if "gbps_median" in r:
            r["pct_of_raw_memcpy"] = round(100 * r["gbps_median"] / raw, 1)
    return rows


def gpu_section(iters: int) -> list[dict]:
    x = torch.randn(64 * 2**20, dtype=torch.bfloat16, device="cuda:0")  # 128 MiB
    y = torch.empty_like(x, device="cuda:1")

    def raw_copy() -> None:
        y.copy_(x, non_blocking=True)
        torch.cuda.synchronize(0)
        torch.cuda.synchronize(1)

    rows = [row("copy cuda:0 -> cuda:1, 1 x 128 MiB", timed(raw_copy, iters), x.numel() * 2)]
    kinds = ["cuda_ipc", "nixl"]
    conn, process = start_receiver("cuda:1", kinds)
    metadata, _ = conn.recv()
    src = make_cache("cuda:0").normal_()
    variants = {
        "cuda_ipc": [
            ("memcpy/descriptor", {}, False),
            ("strided", {"strided": True}, False),
            ("memcpy layer-by-layer", {}, True),
        ],
        "nixl": [("VRAM request", {}, False), ("VRAM layer-by-layer", {}, True)],
    }
    rows += measure_transports("cuda", kinds, variants, conn, metadata, src, iters)
    conn.send(("stop",))
    conn.recv()
    process.join(10)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default="results/bench_kvxfer.json")
    ap.add_argument("--skip-cpu", action="store_true")
    args = ap.parse_args()
    rows = [] if args.skip_cpu else cpu_section(args.iters)
    if torch.cuda.is_available() and torch.cuda.device_count() >= 2:
        rows += gpu_section(args.iters * 2)
    print(f"\n{'what':<36} {'GB/s med':>9} {'GB/s best':>9} {'ms med':>8} {'% raw':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['what']:<36} error: {r['error'][:60]}")
            continue
        pct = r.get("pct_of_raw_memcpy", "")
        print(f"{r['what']:<36} {r['gbps_median']:>9} {r['gbps_best']:>9} "
              f"{r['ms_median']:>8} {pct:>6}")  # fmt: skip
    meta = dict(host=platform.node(), cpus=os.cpu_count(), torch=torch.__version__,
                gpus=torch.cuda.device_count(), request_mib=128, iters=args.iters)  # fmt: skip
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
