"""CUDA graphs of the decode step (GPU only): forward + logits for padded batch sizes.

A pure-decode step (one new token per seq) is a few hundred small kernel launches; replaying
a captured graph launches them all at once. One graph per batch size in `capture_sizes`, all
sharing one memory pool (captured largest first, so the smaller ones fit in its blocks). A step
of n seqs replays the smallest graph of size >= n; the runner pads the extra seqs (slot -1, so
their K/V is never stored; context 1 at block 0, so attention reads a valid block).

Static inputs, written before each replay by device-to-device copies from the step's upload:

    input_ids, positions, slot_mapping  [max_bs] int64
    seq_lens                            [max_bs] int32
    query_start_loc                     [max_bs + 1] int32 (0, 1, 2, ... fixed: one token a seq)
    block_tables                        [max_bs, max_blocks_per_seq] int32

Attention's grid must not depend on values, so each graph runs paged attention with a fixed
split count (from its batch size and the longest context), snapped to a few values so that
Triton compiles few kernel variants at startup.
"""

from __future__ import annotations

import bisect
import logging

import torch

from pdserve.model.ops import AttentionMetadata

log = logging.getLogger(__name__)

_SPLIT_CHOICES = (1, 4, 16)  # fixed split counts the graphs use (each is one Triton compile)


def capture_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16, up to max_batch_size (which is always in)."""
    sizes = [s for s in (1, 2, 4, 8) if s < max_batch_size]
    sizes += list(range(16, max_batch_size, 16))
    return [*sizes, max_batch_size]


class _FixedSplitOps:
    """The model's op bundle with paged attention at a fixed split count (for capture)."""

    def __init__(self, base, num_splits: int) -> None:
        self._base = base
        self.num_splits = num_splits

    def __getattr__(self, name: str):
        return getattr(self._base, name)

    def paged_attention(self, q, kv_cache, meta, scale):
        return self._base.paged_attention(q, kv_cache, meta, scale, num_splits=self.num_splits)


def _num_splits(batch_size: int, num_kv_heads: int, max_seq_len: int, num_sms: int) -> int:
    from pdserve.model.ops.triton_attention import default_num_splits

    want = default_num_splits(batch_size * num_kv_heads, max_seq_len, num_sms)
    return max(s for s in _SPLIT_CHOICES if s <= want)


class DecodeGraphs:
    def __init__(self, model, kv_cache: torch.Tensor, max_batch_size: int, max_blocks: int):
        self.model = model
        self.kv_cache = kv_cache  # [num_layers, num_blocks, 2, block_size, kv_heads, head_dim]
        self.block_size = kv_cache.shape[3]
        self.sizes = capture_sizes(max_batch_size)
        self.max_seq_len = max_blocks * self.block_size
        device = kv_cache.device
        n = max_batch_size

        def zeros(*shape, dtype=torch.int64):
            return torch.zeros(shape, dtype=dtype, device=device)

        self.input_ids = zeros(n)
        self.positions = zeros(n)
        self.slot_mapping = zeros(n) - 1
        self.seq_lens = zeros(n, dtype=torch.int32) + 1
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.block_tables = zeros(n, max_blocks, dtype=torch.int32)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}  # [bs, vocab] float32, in the shared pool
        self.pool = None

    def batch_size_for(self, num_seqs: int) -> int | None:
        i = bisect.bisect_left(self.sizes, num_seqs)
        return self.sizes[i] if i < len(self.sizes) else None

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs],
            query_start_loc=self.query_start_loc[: bs + 1],
            seq_lens=self.seq_lens[:bs],
            block_tables=self.block_tables[:bs],
            max_query_len=1,
            max_seq_len=self.max_seq_len,
            query_start_loc_cpu=list(range(bs + 1)),
            seq_lens_cpu=[1] * bs,
        )

    def _forward(self, bs: int) -> torch.Tensor:
        hidden = self.model(self.input_ids[:bs], self.positions[:bs], self.kv_cache, self._meta(bs))
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        cfg = self.model.config
        num_sms = torch.cuda.get_device_properties(self.kv_cache.device).multi_processor_count
        base_ops = self.model.ops
        try:
            for bs in reversed(self.sizes):
                splits = _num_splits(bs, cfg.num_kv_heads, self.max_seq_len, num_sms)
                self.model.set_ops(_FixedSplitOps(base_ops, splits))
                self._forward(bs)  # warm-up: Triton compiles outside the capture
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    self.logits[bs] = self._forward(bs)
                if self.pool is None:
                    self.pool = graph.pool()
                self.graphs[bs] = graph
        finally:
            self.model.set_ops(base_ops)
        torch.cuda.synchronize()

    def replay(
        self, bs: int, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """Run the graph of size bs on a step padded to bs seqs; -> logits [bs, vocab]."""
        self.input_ids[:bs].copy_(input_ids)
        self.positions[:bs].copy_(positions)
        self.slot_mapping[:bs].copy_(meta.slot_mapping)
        self.seq_lens[:bs].copy_(meta.seq_lens)
        width = meta.block_tables.shape[1]
        self.block_tables[:bs, :width].copy_(meta.block_tables)
        self.graphs[bs].replay()
        return self.logits[bs]
