"""Prefix cache over full blocks: chained block hash -> block id; match, insert, evict, and the
stored/removed events that the global prefix index consumes."""

from __future__ import annotations

from collections.abc import Sequence

from pdserve.hashing import NONE_HASH
from pdserve.sched.block_pool import NO_HASH, BlockPool
from pdserve.types import BlockRemoved, BlockStored, KVCacheEvent


class PrefixCache:
    """The hash -> block id map lives in the pool (`BlockPool.cached_blocks`, which evicts from
    it); this class decides what goes in and records the events.

    `emits_events`: whether stores and evictions are recorded for `drain_events`. A consumer
    that never reads them (the simulator when no routing policy reads the prefix index) turns it
    off; what is cached, matched and evicted is the same either way."""

    def __init__(self, pool: BlockPool, block_size: int, enabled: bool = True):
        self.pool = pool
        self.block_size = block_size
        self.enabled = enabled
        self._events: list[KVCacheEvent] = []
        self._emits_events = True
        pool.on_evict = self._on_evict

    @property
    def emits_events(self) -> bool:
        return self._emits_events

    @emits_events.setter
    def emits_events(self, value: bool) -> None:
        self._emits_events = value
        # The pool calls back per evicted block only when someone reads the events.
        self.pool.on_evict = self._on_evict if value else None

    def __len__(self) -> int:
        return len(self.pool.cached_blocks)

    def match(self, block_hashes: Sequence[int], max_blocks: int = -1) -> list[int]:
        """The block ids of the longest cached prefix of `block_hashes` (of its first
        `max_blocks` when that is >= 0; no references taken)."""
        hits: list[int] = []
        if not self.enabled:
            return hits
        cached_blocks = self.pool.cached_blocks
        n = len(block_hashes)
        if 0 <= max_blocks < n:
            n = max_blocks
        for i in range(n):
            block_id = cached_blocks.get(block_hashes[i])
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def insert(self, block_id: int, block_hash: int, parent_hash: int) -> None:
        """Publish a full, computed block under its hash. A block whose content is already cached
        under another id stays unpublished (it is freed like any uncached block)."""
        cached_blocks, block_hashes = self.pool.cached_blocks, self.pool.block_hashes
        if not self.enabled or block_hashes[block_id] != NO_HASH or block_hash in cached_blocks:
            return
        block_hashes[block_id] = block_hash
        cached_blocks[block_hash] = block_id
        if self._emits_events:
            self._events.append(BlockStored(block_hash, parent_hash, self.block_size))

    def insert_run(
        self, block_ids: list[int], block_hashes: list[int], start: int, end: int
    ) -> None:
        """`insert` of block_ids[i] under block_hashes[i] for i in [start, end), in that order
        (the parent of block i is block i - 1)."""
        if not self.enabled:
            return
        cached_blocks, hash_of = self.pool.cached_blocks, self.pool.block_hashes
        events = self._events if self._emits_events else None
        for i in range(start, end):
            block_id = block_ids[i]
            if hash_of[block_id] != NO_HASH:
                continue
            block_hash = block_hashes[i]
            # one probe for "cached already?" and the insertion
            if cached_blocks.setdefault(block_hash, block_id) != block_id:
                continue  # the same content under another id: stays unpublished
            hash_of[block_id] = block_hash
            if events is not None:
                parent_hash = block_hashes[i - 1] if i > 0 else NONE_HASH
                events.append(BlockStored(block_hash, parent_hash, self.block_size))

    def _on_evict(self, block_hash: int) -> None:
        self._events.append(BlockRemoved(block_hash))

    def cached_hashes(self) -> list[int]:
        return list(self.pool.cached_blocks)

    def drain_events(self) -> list[KVCacheEvent]:
        events, self._events = self._events, []
        return events

    def reset(self) -> int:
        """Forget every unused cached block (e.g. after weights change). Returns how many."""
        pool = self.pool
        ref_cnts, hash_of, cached_blocks = pool.ref_cnts, pool.block_hashes, pool.cached_blocks
        dropped = [(h, b) for h, b in cached_blocks.items() if ref_cnts[b] == 0]
        for block_hash, block_id in dropped:
            del cached_blocks[block_hash]
            hash_of[block_id] = NO_HASH
            if self._emits_events:
                self._events.append(BlockRemoved(block_hash))
        return len(dropped)

    def check_integrity(self) -> None:
        self.pool.check_integrity()  # cached_blocks and block_hashes agree
