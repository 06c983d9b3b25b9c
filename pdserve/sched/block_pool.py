"""A fixed pool of KV block ids with reference counts, the cached blocks by hash, and a free queue
in eviction order. Flat: a block is an index into lists of ints, not an object."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

NO_HASH: Final = -1  # block_hashes[b] of a block that is not cached (hashes are unsigned)
_COMPACT_MIN: Final = 1024  # dead queue entries tolerated before the queue is rebuilt


class BlockPool:
    """Every block is exactly one of: free (ref 0, no hash), cached (ref 0, hashed: reusable by a
    prefix hit until evicted) or used (ref > 0; hashed or not). Free and cached blocks share one
    queue in eviction order: allocation takes from its head, `free` appends at its tail.

    Per block id b: `ref_cnts[b]`, and `block_hashes[b]` (NO_HASH unless b is in the prefix cache,
    i.e. `cached_blocks[block_hashes[b]] == b`). The prefix cache (prefix_cache.py) fills
    `cached_blocks`; the pool evicts from it when it hands a cached block out for new data, and
    then calls `on_evict(block_hash)` if set.

    The queue is a list with lazy removal. A prefix hit that revives a queued block leaves its
    entry in place (stale); freed again, the block gets a new entry at the tail. `_num_entries[b]`
    counts b's entries still in the list: the live one, if any, is b's last, so an entry taken
    from the head is live only if it is its block's last (count 1) and the block is unused (ref
    0). The consumed head is cut off once it is half the list, and the list is rebuilt (same
    order) when stale entries outnumber live ones, so it stays O(num_blocks). Every per-block
    value but the hash is a small int (no heap int to chase per block).

        _queue:  | consumed ... |<- _head: live and stale entries, eviction order ->|
                                  free appends here at the tail ------------------->|

    Blocks never used yet stand implicitly at the head of the queue and enter the lists on first
    allocation, so a pool of 10M blocks costs nothing until it is used (the simulator runs
    thousands of instances).
    """

    def __init__(self, num_blocks: int, on_evict: Callable[[int], None] | None = None):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self._num_blocks = num_blocks
        # Indexed by block id; grown in chunks as blocks are first used (ids >= _num_touched
        # are never-used blocks: ref 0, no hash, no queue entry).
        self.ref_cnts: list[int] = []
        self.block_hashes: list[int] = []
        self._num_entries: list[int] = []  # the block's entries in _queue (live or stale)
        self._num_touched = 0  # blocks used at least once: ids [0, _num_touched)
        self.cached_blocks: dict[int, int] = {}  # block hash -> block id
        self._queue: list[int] = []  # block ids
        self._head = 0  # entries before it are consumed
        self._num_queued = 0  # live entries: blocks with ref 0 among the touched ones
        self.on_evict = on_evict

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take now: never used, free, or cached-but-unused."""
        return self._num_blocks - self._num_touched + self._num_queued

    @property
    def num_touched_blocks(self) -> int:
        """Blocks used at least once: ids below this have been allocated."""
        return self._num_touched

    def allocate(self, num_blocks: int) -> list[int]:
        """Take `num_blocks` block ids from the head of the queue, each with ref count 1. A cached
        block taken leaves the prefix cache."""
        num_free = self.num_free_blocks
        if num_blocks > num_free:
            raise RuntimeError(f"asked for {num_blocks} blocks, {num_free} free")
        ref_cnts = self.ref_cnts
        taken: list[int] = []
        first_fresh = self._num_touched
        num_fresh = min(num_blocks, self._num_blocks - first_fresh)
        if num_fresh > 0:
            end = first_fresh + num_fresh
            if end > len(ref_cnts):
                self._grow(end)
            for block_id in range(first_fresh, end):
                ref_cnts[block_id] = 1
                taken.append(block_id)
            self._num_touched = end
        num_queued = num_blocks - num_fresh
        if num_queued <= 0:
            return taken
        queue, num_entries, block_hashes = self._queue, self._num_entries, self.block_hashes
        cached_blocks, on_evict = self.cached_blocks, self.on_evict
        i = self._head
        for _ in range(num_queued):
            while True:
                block_id = queue[i]
                i += 1
                n = num_entries[block_id]
                num_entries[block_id] = n - 1
                if n == 1 and ref_cnts[block_id] == 0:
                    break  # live; otherwise stale (revived since, or queued again later)
            block_hash = block_hashes[block_id]
            if block_hash != NO_HASH:
                del cached_blocks[block_hash]
                block_hashes[block_id] = NO_HASH
                if on_evict is not None:
                    on_evict(block_hash)
            ref_cnts[block_id] = 1
            taken.append(block_id)
        self._head = i
        self._num_queued -= num_queued
        return taken

    def touch(self, block_ids: Iterable[int]) -> None:
        """Add a reference to each block (a prefix hit), reviving cached blocks from the queue
        (their entries go stale)."""
        ref_cnts = self.ref_cnts
        for block_id in block_ids:
            ref_cnt = ref_cnts[block_id]
            if ref_cnt == 0:
                self._num_queued -= 1
            ref_cnts[block_id] = ref_cnt + 1

    def free(self, block_ids: list[int], tail_first: bool = False) -> None:
        """Drop a reference from each block; blocks reaching 0 join the queue tail in the given
        order, or last to first with `tail_first` (a request frees its blocks so: its tail is
        evicted before the head it may share)."""
        ref_cnts, queue, num_entries = self.ref_cnts, self._queue, self._num_entries
        num_queued = self._num_queued
        n = len(block_ids)
        for k in range(n):
            block_id = block_ids[n - 1 - k] if tail_first else block_ids[k]
            ref_cnt = ref_cnts[block_id] - 1
            if ref_cnt < 0:
                self._num_queued = num_queued  # the blocks before it stay freed
                raise RuntimeError(f"block {block_id} freed with ref count {ref_cnt + 1}")
            ref_cnts[block_id] = ref_cnt
            if ref_cnt == 0:
                queue.append(block_id)
                num_entries[block_id] += 1
                num_queued += 1
        self._num_queued = num_queued
        head = self._head
        if head > _COMPACT_MIN and 2 * head > len(queue):
            del queue[:head]  # the consumed half: one memmove
            self._head = head = 0
        num_stale = len(queue) - head - num_queued
        if num_stale > num_queued and num_stale > _COMPACT_MIN:
            self._compact()

    def _grow(self, num_needed: int) -> None:
        """Lengthen the per-block lists to at least `num_needed` (doubling, up to num_blocks)."""
        size = len(self.ref_cnts)
        new_size = min(self._num_blocks, max(num_needed, 2 * size, 64))
        more = new_size - size
        self.ref_cnts.extend([0] * more)
        self.block_hashes.extend([NO_HASH] * more)
        self._num_entries.extend([0] * more)

    def _compact(self) -> None:
        """Drop consumed and stale entries; the live ones keep their order."""
        live = self.queued_block_ids()
        queue, num_entries = self._queue, self._num_entries
        for i in range(self._head, len(queue)):
            num_entries[queue[i]] = 0
        for block_id in live:
            num_entries[block_id] = 1
        self._queue = live
        self._head = 0

    def queued_block_ids(self) -> list[int]:
        """The free queue's live entries, head first (blocks never used not included)."""
        queue, num_entries, ref_cnts = self._queue, self._num_entries, self.ref_cnts
        seen = [0] * len(num_entries)  # entries of the block met so far
        live: list[int] = []
        for i in range(self._head, len(queue)):
            block_id = queue[i]
            seen[block_id] += 1
            if seen[block_id] == num_entries[block_id] and ref_cnts[block_id] == 0:
                live.append(block_id)
        return live

    def num_cached_blocks(self) -> int:
        return len(self.cached_blocks)

    def check_integrity(self) -> None:
        """free + cached + used == total, ref counts >= 0, the queue holds exactly the ref-0
        blocks, once each; `cached_blocks` and `block_hashes` agree."""
        ref_cnts, queue, num_entries = self.ref_cnts, self._queue, self._num_entries
        queued = self.queued_block_ids()
        assert len(queued) == self._num_queued, "queue count drifted"
        assert len(set(queued)) == len(queued), "free queue holds duplicates"
        in_queue = set(queued)
        num_touched = self._num_touched
        assert num_touched <= len(ref_cnts) <= self._num_blocks
        assert len(self.block_hashes) == len(ref_cnts) == len(num_entries)
        counts = [0] * len(ref_cnts)
        for i in range(self._head, len(queue)):
            counts[queue[i]] += 1
        assert counts == num_entries, "entry counts drifted"
        for block_id in range(num_touched):
            ref_cnt = ref_cnts[block_id]
            assert ref_cnt >= 0, f"block {block_id} has ref count {ref_cnt}"
            assert (block_id in in_queue) == (ref_cnt == 0), (
                f"block {block_id}: ref count {ref_cnt} but in_queue={block_id in in_queue}"
            )
        for block_id in range(num_touched, len(ref_cnts)):  # never used
            assert ref_cnts[block_id] == 0 and self.block_hashes[block_id] == NO_HASH
        num_hashed = sum(1 for h in self.block_hashes if h != NO_HASH)
        assert num_hashed == len(self.cached_blocks), "hashed blocks != cached blocks"
        for block_hash, block_id in self.cached_blocks.items():
            assert self.block_hashes[block_id] == block_hash, f"block {block_id} hash mismatch"
