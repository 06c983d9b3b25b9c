"""The kvxfer vocabulary: what a peer publishes about its KV memory, what a transfer moves, and
the handle and status a caller polls. Plain data; no transport lives here.

A KV cache is one tensor per instance, [num_layers, num_blocks, 2, block_size, num_kv_heads,
head_dim]. Block b of layer l (its K and V) is one contiguous chunk of `block_bytes` bytes at
byte offset (l * num_blocks + b) * block_bytes:

    layer 0: | b0 | b1 | b2 | ... | b{num_blocks-1} |
    layer 1: | b0 | b1 | b2 | ... |                    <- stride num_blocks * block_bytes
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Direction = Literal["push", "pull"]


class TransferStatus(enum.Enum):
    PENDING = "pending"
    DONE = "done"  # every byte of the spec landed in the destination
    FAILED = "failed"  # error, truncation or timeout: the destination blocks hold garbage


@dataclass(frozen=True, slots=True)
class KVLayout:
    """Shape of one registered KV cache, in blocks and bytes."""

    num_layers: int
    num_blocks: int
    block_bytes: int  # one block of one layer, K and V: 2 * block_size * kv_heads * head_dim * elem

    @property
    def layer_stride_bytes(self) -> int:
        return self.num_blocks * self.block_bytes

    @property
    def total_bytes(self) -> int:
        return self.num_layers * self.layer_stride_bytes

    @classmethod
    def of(cls, kv_cache) -> KVLayout:
        """Layout of a contiguous [num_layers, num_blocks, 2, block_size, kv_heads, head_dim]."""
        if kv_cache.dim() != 6 or not kv_cache.is_contiguous():
            raise ValueError(
                "a KV cache is one contiguous tensor [num_layers, num_blocks, 2, block_size, "
                f"num_kv_heads, head_dim]; got shape {tuple(kv_cache.shape)}"
            )
        num_layers, num_blocks = kv_cache.shape[:2]
        block_bytes = kv_cache[0, 0].numel() * kv_cache.element_size()
        return cls(int(num_layers), int(num_blocks), int(block_bytes))


@dataclass(frozen=True, slots=True)
class PeerMetadata:
    """What `register` returns (pickled) and `add_peer` takes: enough for a peer to reach this
    KV cache. `backend` is the transport's own part (NIXL agent metadata, a CUDA IPC handle)."""

    name: str
    transport: str
    layout: KVLayout
    backend: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TransferSpec:
    """Move the KV of `layer_start <= layer < layer_end` for src_block_ids[i] -> dst_block_ids[i].

    push: src is this instance's cache, dst the peer's (the prefill side writes into the decode
    side's reserved blocks). pull: src is the peer's, dst this instance's (remote prefix pull).
    Only the listed blocks and layers move; `layer_end=None` means all layers, so a runner can
    stream layer by layer with one spec per finished layer range.
    """

    request_id: str
    peer: str
    src_block_ids: Sequence[int]
    dst_block_ids: Sequence[int]
    layer_start: int = 0
    layer_end: int | None = None
    direction: Direction = "push"
    timeout_s: float | None = None  # None: the transport's default


@dataclass(frozen=True, slots=True)
class TransferHandle:
    transfer_id: int
    request_id: str
    peer: str
    nbytes: int  # bytes the spec asks to move


@dataclass(slots=True)
class TransportStats:
    """Counters since the transport was made (for metrics: KV bytes and blocks moved, failures)."""

    num_transfers: int = 0
    num_done: int = 0
    num_failed: int = 0
    bytes_done: int = 0
    num_descriptors: int = 0
