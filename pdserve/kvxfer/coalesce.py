"""Block ids -> byte descriptors: consecutive block ids coalesce into one contiguous range per
layer, computed with numpy in one pass (no per-block Python loop).

A run is a maximal stretch where both the src and the dst ids go up by one:

    src  3 4 5 9 10 | dst 7 8 9 2 3   ->   runs (src 3, dst 7, 3 blocks), (src 9, dst 2, 2 blocks)

Each run is one descriptor per layer: num_descriptors = num_layers_moved * num_runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pdserve.kvxfer.spec import KVLayout


@dataclass(frozen=True, slots=True)
class BlockRuns:
    src_starts: np.ndarray  # [num_runs] int64, first src block id of each run
    dst_starts: np.ndarray  # [num_runs] int64
    lengths: np.ndarray  # [num_runs] int64, blocks per run


@dataclass(frozen=True, slots=True)
class Descriptors:
    """Byte ranges to copy, layer-major ([num_layers_moved, num_runs] flattened). Offsets are from
    the start of each side's KV tensor; a transport adds its base addresses."""

    src_offsets: np.ndarray  # [n] int64 bytes
    dst_offsets: np.ndarray  # [n] int64 bytes
    nbytes: np.ndarray  # [n] int64 bytes
    num_layers: int  # layers moved
    is_layer_major: bool = True  # n == num_layers * num_runs (False once truncated)

    def __len__(self) -> int:
        return int(self.nbytes.size)

    @property
    def total_bytes(self) -> int:
        return int(self.nbytes.sum())


def block_runs(src_block_ids, dst_block_ids) -> BlockRuns:
    src = np.asarray(src_block_ids, dtype=np.int64).reshape(-1)
    dst = np.asarray(dst_block_ids, dtype=np.int64).reshape(-1)
    if src.shape != dst.shape:
        raise ValueError(f"{src.size} src block ids but {dst.size} dst block ids")
    if src.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return BlockRuns(empty, empty, empty)
    breaks = np.flatnonzero((np.diff(src) != 1) | (np.diff(dst) != 1)) + 1
    starts = np.concatenate(([0], breaks))
    lengths = np.diff(np.concatenate((starts, [src.size])))
    return BlockRuns(src[starts], dst[starts], lengths)


def check_block_ids(block_ids, layout: KVLayout, side: str) -> None:
    ids = np.asarray(block_ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= layout.num_blocks):
        raise ValueError(f"{side} block id out of range [0, {layout.num_blocks})")
    if side == "dst" and np.unique(ids).size != ids.size:
        raise ValueError("dst block ids repeat: two blocks would land in one")


def layer_descriptors(
    runs: BlockRuns, src: KVLayout, dst: KVLayout, layer_start: int, layer_end: int
) -> Descriptors:
    """One descriptor per (layer, run) for layers [layer_start, layer_end)."""
    if src.block_bytes != dst.block_bytes or src.num_layers != dst.num_layers:
        raise ValueError(f"incompatible KV layouts: {src} vs {dst}")
    if not 0 <= layer_start < layer_end <= src.num_layers:
        raise ValueError(f"layer range [{layer_start}, {layer_end}) not in [0, {src.num_layers}]")
    layers = np.arange(layer_start, layer_end, dtype=np.int64)[:, None]  # [L, 1]
    bb = src.block_bytes
    src_offsets = (layers * src.num_blocks + runs.src_starts[None, :]) * bb  # [L, R]
    dst_offsets = (layers * dst.num_blocks + runs.dst_starts[None, :]) * bb  # [L, R]
    nbytes = np.broadcast_to(runs.lengths * bb, src_offsets.shape)
    return Descriptors(
        src_offsets.reshape(-1),
        dst_offsets.reshape(-1),
        np.ascontiguousarray(nbytes).reshape(-1),
        layer_end - layer_start,
    )


def truncate(descs: Descriptors, keep_fraction: float) -> Descriptors:
    """The first `keep_fraction` of the bytes, in descriptor order (fault injection)."""
    keep_bytes = int(descs.total_bytes * keep_fraction)
    ends = np.cumsum(descs.nbytes)
    n = int(np.searchsorted(ends, keep_bytes, side="left")) + 1
    nbytes = descs.nbytes[:n].copy()
    if n:
        nbytes[-1] -= int(ends[n - 1]) - keep_bytes
    keep = nbytes > 0
    return Descriptors(
        descs.src_offsets[:n][keep],
        descs.dst_offsets[:n][keep],
        nbytes[keep],
        descs.num_layers,
        is_layer_major=False,
    )
