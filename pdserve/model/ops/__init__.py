"""Op bundles: the model calls these; the bundle decides how they run.

`torch_ref` is the CPU path and the oracle for every faster bundle (`triton_*`, imported only when
chosen). All bundles share this contract.

Paged KV cache layout, one tensor per model:
    kv_cache: [num_layers, num_blocks, 2, block_size, num_kv_heads, head_dim]
    kv_cache[layer]        -> [num_blocks, 2, block_size, num_kv_heads, head_dim]
    kv_cache[layer, b]     -> block b's K and V for that layer: one contiguous chunk
    kv_cache[layer, b, 0]  -> K, kv_cache[layer, b, 1] -> V
A token's slot is `block_id * block_size + offset_in_block`.

A step packs the new tokens of all scheduled sequences back to back ("varlen"):

    seq 0: |-- cached (in kv_cache) --|-- new q tokens --|
    seq 1: |------ cached ------|- new -|
           <-------------- seq_lens[i] --------------->
    query_start_loc = [0, q0, q0 + q1, ...]

The new tokens' K/V are stored into the cache first (`rotary_store_kv`: rope, then
`store_kv`), then attention reads the
whole context of each sequence from the cache (`paged_attention`), causally: new token j of
sequence i (position seq_lens[i] - q_len_i + j) attends to positions 0 .. its own.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot of each new token
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32: cumulative new-token counts
    seq_lens: torch.Tensor  # [num_seqs] int32: context length of each sequence incl. new tokens
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32, padded with 0
    max_query_len: int
    max_seq_len: int
    # Host copies, so that host-side loops (torch_ref) never synchronize with the device.
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def is_pure_decode(self) -> bool:
        return self.max_query_len == 1


class OpsBundle(Protocol):
    """The ops a model needs. Every function is pure except `store_kv`, which writes the cache."""

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x: [num_tokens, hidden] -> same shape; computed in float32, returned in x.dtype."""

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """residual = x + residual; return (rms_norm(residual), residual)."""

    def rotary(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Neox-style (rotate-half) rope. q: [T, num_heads, head_dim], k: [T, num_kv_heads,
        head_dim], positions: [T] int64, cos_sin: [max_pos, head_dim] (cos half | sin half)."""

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """gate_up: [T, 2 * inter] (gate | up) -> silu(gate) * up: [T, inter]."""

    def store_kv(
        self, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
    ) -> None:
        """Write k, v ([T, num_kv_heads, head_dim]) into one layer's cache at slot_mapping."""

    def rotary_store_kv(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        cos_sin: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> torch.Tensor:
        """`q, k = rotary(q, k, ...)`, then `store_kv(k, v, ...)`; returns the rotated q.
        May overwrite q in place (the caller must not reuse the q it passed in)."""

    def qkv_rotary_store_kv(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        positions: torch.Tensor,
        cos_sin: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        num_heads: int,
    ) -> torch.Tensor:
        """The attention's input side in one op: qkv = linear(hidden, weight, bias), split into
        q [T, H, D], k, v [T, KV, D] (KV, D from kv_cache), then rotary_store_kv; -> rope(q)."""

    def linear(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """F.linear: x [T, in] @ weight [out, in].T (+ bias) -> [T, out]."""

    def silu_mul_linear(self, gate_up: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """linear(silu_mul(gate_up), weight): the MLP's activation and down projection."""

    def paged_attention(
        self, q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float
    ) -> torch.Tensor:
        """q: [T, num_heads, head_dim] -> [T, num_heads, head_dim]; causal over each sequence's
        cached context (GQA: head h reads kv head h // (num_heads // num_kv_heads))."""


_BUNDLES = {"torch_ref": "pdserve.model.ops.torch_ref", "triton": "pdserve.model.ops.triton_ops"}


def get_ops(name: str = "torch_ref") -> Any:
    """The op bundle registered under `name` (imported lazily: triton only when chosen)."""
    if name not in _BUNDLES:
        raise ValueError(f"unknown ops bundle {name!r}; choose one of {sorted(_BUNDLES)}")
    return importlib.import_module(_BUNDLES[name])
