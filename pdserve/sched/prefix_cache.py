"""Prefix cache over full blocks: chained block hash -> block; match, insert, evict, and the
stored/removed events that the global prefix index consumes."""

from __future__ import annotations

from collections.abc import Sequence

from pdserve.hashing import NONE_HASH
from pdserve.sched.block_pool import Block, BlockPool
from pdserve.types import BlockRemoved, BlockStored, KVCacheEvent


class PrefixCache:
    """`emits_events`: whether stores and evictions are recorded for `drain_events`. A consumer
    that never reads them (the simulator when no routing policy reads the prefix index) turns it
    off; what is cached, matched and evicted is the same either way."""

    def __init__(self, pool: BlockPool, block_size: int, enabled: bool = True):
        self.pool = pool
        self.block_size = block_size
        self.enabled = enabled
        self.emits_events = True
        self._blocks_by_hash: dict[int, Block] = {}
        self._events: list[KVCacheEvent] = []
        pool.on_evict = self._evict

    def __len__(self) -> int:
        return len(self._blocks_by_hash)

    def match(self, block_hashes: Sequence[int]) -> list[Block]:
        """The blocks of the longest cached prefix of `block_hashes` (no references taken)."""
        if not self.enabled:
            return []
        hits = []
        for block_hash in block_hashes:
            block = self._blocks_by_hash.get(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits

    def insert(self, block: Block, block_hash: int, parent_hash: int) -> None:
        """Publish a full, computed block under its hash. A block whose content is already cached
        under another id stays unpublished (it is freed like any uncached block)."""
        if not self.enabled or block.block_hash is not None or block_hash in self._blocks_by_hash:
            return
        block.block_hash = block_hash
        self._blocks_by_hash[block_hash] = block
        if self.emits_events:
            self._events.append(BlockStored(block_hash, parent_hash, self.block_size))

    def insert_run(
        self, blocks: Sequence[Block], block_hashes: Sequence[int], start: int, end: int
    ) -> None:
        """`insert` of blocks[i] under block_hashes[i] for i in [start, end), in that order (the
        parent of block i is block i - 1)."""
        if not self.enabled:
            return
        by_hash = self._blocks_by_hash
        events = self._events if self.emits_events else None
        for i in range(start, end):
            block, block_hash = blocks[i], block_hashes[i]
            if block.block_hash is not None or block_hash in by_hash:
                continue
            block.block_hash = block_hash
            by_hash[block_hash] = block
            if events is not None:
                parent_hash = block_hashes[i - 1] if i > 0 else NONE_HASH
                events.append(BlockStored(block_hash, parent_hash, self.block_size))

    def _evict(self, block: Block) -> None:
        assert block.block_hash is not None
        del self._blocks_by_hash[block.block_hash]
        if self.emits_events:
            self._events.append(BlockRemoved(block.block_hash))

    def cached_hashes(self) -> list[int]:
        return list(self._blocks_by_hash)

    def drain_events(self) -> list[KVCacheEvent]:
        events, self._events = self._events, []
        return events

    def reset(self) -> int:
        """Forget every unused cached block (e.g. after weights change). Returns how many."""
        dropped = [b for b in self._blocks_by_hash.values() if b.ref_cnt == 0]
        for block in dropped:
            self._evict(block)
            block.block_hash = None
        return len(dropped)

    def check_integrity(self) -> None:
        for block_hash, block in self._blocks_by_hash.items():
            assert block.block_hash == block_hash, f"block {block.block_id} hash mismatch"
        assert len(self._blocks_by_hash) == self.pool.num_cached_blocks()
