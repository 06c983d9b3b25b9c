"""KV transfer throughput between two processes for one 1k-token Llama-3.1-8B-shaped request:
32 layers x 64 blocks of 16 tokens x (K, V) x 8 kv heads x 128 x bf16 = 128 MiB, moved from
blocks 0..63 of the sender's cache into blocks 64..127 of the receiver's (one run: one 4 MiB
descriptor per layer).

    .venv/bin/python benchmarks/bench_kvxfer.py [--iters 15] [--out results/bench_kvxfer.json]

Every variant runs once per round, rounds interleaved, so a loaded machine slows them alike; a
row gives the median over rounds and `pct_of_raw_memcpy` = its median throughput over the fastest
memcpy row's median (`pct_per_round`: the median over rounds of the same ratio inside one round).

CPU (always), one thread: NIXL (UCX picks CMA for a same-host peer) into the receiver's cache,
which is anonymous memory as in a worker. The memcpy references move the same bytes with the same
descriptors: from this process into a shared-memory mirror of the receiver's cache (4 KiB pages:
tmpfs gives no huge pages here), and, in this process, between two caches on 2 MiB pages (the
pages NIXL's registration gives the caches). NIXL rows: one request (moved inside `poll`), one
with the sender's progress thread, 32 layer-by-layer requests, 2048 descriptors of 64 KiB (every
block its own run), and on 4 KiB pages (huge_pages=False on both sides).
GPU (2+ GPUs): CUDA IPC cuda:0 -> cuda:1 (one request by memcpy per descriptor and by the
copy kernel, layer by layer, and every block its own run) and NIXL on VRAM (where nixl is
installed), vs a plain cuda:0 -> cuda:1 copy of
128 MiB in one process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from dataclasses import dataclass, field

import torch

from pdserve.kvxfer import TransferSpec, TransferStatus, make_transport, wait_all

NUM_LAYERS, BLOCK_SIZE, KV_HEADS, HEAD_DIM = 32, 16, 8, 128
REQ_BLOCKS = 64  # 1024 tokens
NUM_BLOCKS = 2 * REQ_BLOCKS  # each cache: 256 MiB
SRC_IDS, DST_IDS = list(range(REQ_BLOCKS)), list(range(REQ_BLOCKS, 2 * REQ_BLOCKS))
# every block its own run: dst 64, 66, ..., 126, 65, 67, ..., 127 -> 64 runs x 32 layers
SCATTERED_DST_IDS = DST_IDS[0::2] + DST_IDS[1::2]


def make_cache(device: str) -> torch.Tensor:
    # [num_layers, num_blocks, 2, block_size, kv_heads, head_dim] bf16
    shape = (NUM_LAYERS, NUM_BLOCKS, 2, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    return torch.zeros(shape, dtype=torch.bfloat16, device=device)


def checksum(cache: torch.Tensor, block_ids: list[int]) -> int:
    """Exact and order-sensitive: the bf16 bit patterns of cache[:, block_ids] as integers, summed
    with position weights (a float sum would depend on the order of additions)."""
    bits = cache[:, block_ids].contiguous().view(torch.int16).reshape(-1).to(torch.int64)
    weights = torch.arange(bits.numel(), device=bits.device) % 997 + 1
    return int((bits * weights).sum())


@dataclass(frozen=True)
class Target:
    """One receiver-side transport, with its own cache."""

    label: str
    kind: str
    options: dict = field(default_factory=dict)


def receiver(conn, device: str, targets: list[Target]) -> None:
    """The decode side: one cache per target, registered with that target's transport; on CPU
    also a shared-memory mirror (the memcpy reference's destination). Answers ("checksum",
    label, block_ids), ("clear", label), ("stop",)."""
    torch.set_num_threads(1)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)  # as a worker on its GPU does
    caches, transports, metadata = {}, {}, {}
    for t in targets:
        caches[t.label] = make_cache(device)
        try:
            transports[t.label] = make_transport(t.kind, f"decode-{t.label}", **t.options)
            metadata[t.label] = transports[t.label].register(caches[t.label])
        except Exception as exc:  # reported as that target's error
            metadata[t.label] = repr(exc)
    mirror = make_cache(device).share_memory_() if device == "cpu" else None
    conn.send((metadata, mirror))
    while (command := conn.recv())[0] != "stop":
        if command[0] == "checksum":
            conn.send(checksum(caches[command[1]], command[2]))
        elif command[0] == "clear":
            caches[command[1]].zero_()
            conn.send(True)
    for transport in transports.values():
        transport.close()
    conn.send(True)


def start_receiver(device: str, targets: list[Target]):
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    process = ctx.Process(target=receiver, args=(there, device, targets), daemon=True)
    process.start()
    return here, process


def stop_receiver(conn, process) -> None:
    conn.send(("stop",))
    conn.recv()
    process.join(10)


def transfer_fn(transport, peer: str, per_layer: bool, dst_ids: list[int]):
    def run() -> None:
        if per_layer:  # what a runner streaming layer by layer does
            specs = [TransferSpec("r", peer, SRC_IDS, dst_ids, i, i + 1) for i in range(NUM_LAYERS)]
        else:
            specs = [TransferSpec("r", peer, SRC_IDS, dst_ids)]
        statuses = wait_all(transport, [transport.send(s) for s in specs])
        if any(s is not TransferStatus.DONE for s in statuses):
            raise RuntimeError(f"transfer failed: {statuses}")

    return run


@dataclass
class Variant:
    """One sender-side way to move the request into `target`'s cache."""

    label: str
    target: str
    options: dict = field(default_factory=dict)
    per_layer: bool = False
    dst_ids: list[int] = field(default_factory=lambda: DST_IDS)
    src: str = "src"  # which of the sender's caches


def prepare_transfers(kind, variants, conn, metadata, srcs) -> tuple[dict, list[dict]]:
    """{label: fn} for the variants that start and move the right bytes once; error rows else."""
    fns, errors = {}, []
    for v in variants:
        if isinstance(metadata[v.target], str):
            errors.append(dict(what=v.label, error=metadata[v.target]))
            continue
        try:
            transport = make_transport(kind, f"prefill-{v.label}", **v.options)
            transport.register(srcs[v.src])
            peer = transport.add_peer(metadata[v.target])
            fn = transfer_fn(transport, peer, v.per_layer, v.dst_ids)
            conn.send(("clear", v.target))
            conn.recv()
            fn()
            conn.send(("checksum", v.target, v.dst_ids))
            if conn.recv() != checksum(srcs[v.src], SRC_IDS):
                raise RuntimeError("the receiver's blocks differ from the sender's")
            fns[v.label] = (fn, transport)
        except Exception as exc:
            errors.append(dict(what=v.label, error=repr(exc)))
    return fns, errors


def interleaved(fns: dict, rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of every fn, each called once per round in turn."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(rounds):
        for label, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    return times


def summarize(times, nbytes: int, references: list[str], extra: dict) -> list[dict]:
    """Rows: GB/s median and best; others against the fastest reference row."""
    rows = {}
    for label, ts in times.items():
        best, median = min(ts), statistics.median(ts)
        rows[label] = dict(what=label, gbps_median=round(nbytes / median / 1e9, 2),
                           gbps_best=round(nbytes / best / 1e9, 2),
                           ms_median=round(median * 1e3, 2), **extra.get(label, {}))  # fmt: skip
    raw = max(references, key=lambda label: rows[label]["gbps_median"])
    for label, r in rows.items():
        if label in references:
            continue
        r["pct_of_raw_memcpy"] = round(100 * r["gbps_median"] / rows[raw]["gbps_median"], 1)
        per_round = [
            min(times[ref][i] for ref in references) / t for i, t in enumerate(times[label])
        ]
        r["pct_per_round"] = round(100 * statistics.median(per_round), 1)
        r["raw_reference"] = raw
    return list(rows.values())


def cpu_section(iters: int) -> list[dict]:
    torch.set_num_threads(1)  # the raw memcpy reference is one thread, like UCX's copy
    targets = [Target("huge", "nixl"), Target("4k", "nixl", {"huge_pages": False})]
    conn, process = start_receiver("cpu", targets)
    metadata, mirror = conn.recv()  # mirror: the receiver's shared memory, mapped here
    src = make_cache("cpu").normal_()
    srcs = {"src": src, "src_4k": src.clone()}  # src_4k: no transport asks for huge pages
    nbytes = NUM_LAYERS * REQ_BLOCKS * src[0, 0].numel() * src.element_size()
    variants = [
        Variant("nixl request", "huge"),
        Variant("nixl request, progress thread", "huge", {"progress_thread": True}),
        Variant("nixl layer-by-layer (32 requests)", "huge", per_layer=True),
        Variant("nixl request, 2048 x 64 KiB", "huge", dst_ids=SCATTERED_DST_IDS),
        Variant("nixl request, 4 KiB pages", "4k", {"huge_pages": False}, src="src_4k"),
    ]
    transfers, errors = prepare_transfers("nixl", variants, conn, metadata, srcs)
    local = make_cache("cpu")  # in-process destination on the same pages as NIXL's caches
    local_4k = make_cache("cpu")
    from pdserve.kvxfer.nixl import back_with_huge_pages

    huge = (back_with_huge_pages(src), back_with_huge_pages(local))

    def per_descriptor(dst, source):
        def run() -> None:
            for layer in range(NUM_LAYERS):
                dst[layer, REQ_BLOCKS:].copy_(source[layer, :REQ_BLOCKS])

        return run

    flat_src, flat_dst = src.view(-1)[: nbytes // 2], mirror.view(-1)[nbytes // 2 : nbytes]
    references = {
        "memcpy 32 x 4 MiB into shm mirror": per_descriptor(mirror, src),
        "memcpy 1 x 128 MiB into shm mirror": lambda: flat_dst.copy_(flat_src),
        "memcpy 32 x 4 MiB in-process, 2 MiB pages": per_descriptor(local, src),
        "memcpy 32 x 4 MiB in-process, 4 KiB pages": per_descriptor(local_4k, srcs["src_4k"]),
    }
    fns = {**references, **{label: fn for label, (fn, _) in transfers.items()}}
    extra = {label: dict(descriptors_per_transfer=t.stats.num_descriptors // t.stats.num_transfers,
                         transfers_per_request=NUM_LAYERS if "layer-by-layer" in label else 1,
                         huge_page_mib=t.huge_page_bytes >> 20)
             for label, (_, t) in transfers.items()}  # fmt: skip
    extra["memcpy 32 x 4 MiB in-process, 2 MiB pages"] = dict(huge_page_mib=min(huge) >> 20)
    times = interleaved(fns, iters)
    for _, transport in transfers.values():
        transport.close()
    stop_receiver(conn, process)
    return summarize(times, nbytes, list(references), extra) + errors


def gpu_section(iters: int) -> list[dict]:
    x = torch.randn(64 * 2**20, dtype=torch.bfloat16, device="cuda:0")  # 128 MiB
    y = torch.empty_like(x, device="cuda:1")

    def raw_copy() -> None:
        y.copy_(x, non_blocking=True)
        torch.cuda.synchronize(0)
        torch.cuda.synchronize(1)

    targets = [Target("cuda_ipc", "cuda_ipc"), Target("nixl_vram", "nixl")]
    conn, process = start_receiver("cuda:1", targets)
    metadata, _ = conn.recv()
    srcs = {"src": make_cache("cuda:0").normal_()}
    nbytes = x.numel() * x.element_size()
    ipc = [Variant("cuda_ipc memcpy/descriptor", "cuda_ipc"),
           Variant("cuda_ipc memcpy layer-by-layer", "cuda_ipc", per_layer=True),
           Variant("cuda_ipc copy kernel", "cuda_ipc", {"max_memcpy_descriptors": 0}),
           Variant("cuda_ipc 2048 x 64 KiB, copy kernel", "cuda_ipc",
                   dst_ids=SCATTERED_DST_IDS),
           Variant("cuda_ipc 2048 x 64 KiB, memcpy each", "cuda_ipc",
                   {"max_memcpy_descriptors": 4096}, dst_ids=SCATTERED_DST_IDS)]  # fmt: skip
    nixl = [Variant("nixl VRAM request", "nixl_vram"),
            Variant("nixl VRAM layer-by-layer", "nixl_vram", per_layer=True)]  # fmt: skip
    fns_ipc, errors = prepare_transfers("cuda_ipc", ipc, conn, metadata, srcs)
    fns_nixl, errors_nixl = prepare_transfers("nixl", nixl, conn, metadata, srcs)
    reference = "copy cuda:0 -> cuda:1, 1 x 128 MiB"
    fns = {reference: raw_copy, **{k: fn for k, (fn, _) in {**fns_ipc, **fns_nixl}.items()}}
    times = interleaved(fns, iters)
    for _, transport in {**fns_ipc, **fns_nixl}.values():
        transport.close()
    stop_receiver(conn, process)
    return summarize(times, nbytes, [reference], {}) + errors + errors_nixl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=15, help="interleaved rounds")
    ap.add_argument("--out", default="results/bench_kvxfer.json")
    ap.add_argument("--skip-cpu", action="store_true")
    args = ap.parse_args()
    load_before = os.getloadavg()
    rows = [] if args.skip_cpu else cpu_section(args.iters)
    if torch.cuda.is_available() and torch.cuda.device_count() >= 2:
        rows += gpu_section(args.iters * 2)
    load_after = os.getloadavg()
    print(
        f"\n{'what':<44} {'GB/s med':>9} {'GB/s best':>9} {'ms med':>8} {'% raw':>6} {'% rnd':>6}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['what']:<44} error: {r['error'][:60]}")
            continue
        pct, rnd = r.get("pct_of_raw_memcpy", ""), r.get("pct_per_round", "")
        print(f"{r['what']:<44} {r['gbps_median']:>9} {r['gbps_best']:>9} "
              f"{r['ms_median']:>8} {pct:>6} {rnd:>6}")  # fmt: skip
    print(f"load average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f}")
    meta = dict(host=platform.node(), cpus=os.cpu_count(), torch=torch.__version__,
                gpus=torch.cuda.device_count(), request_mib=128, rounds=args.iters,
                loadavg_before=load_before, loadavg_after=load_after)  # fmt: skip
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
