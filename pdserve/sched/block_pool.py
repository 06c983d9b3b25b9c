"""A fixed pool of KV block ids with reference counts and a free queue in eviction order."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(slots=True, init=False)
class Block:
    block_id: int
    ref_cnt: int
    block_hash: int | None  # set while the block is in the prefix cache

    # Written out (not generated): the dataclass's `__init__` is built at import time, which
    # the mypyc build (benchmarks/build_sim_fast.py) cannot compile.
    def __init__(self, block_id: int, ref_cnt: int = 0, block_hash: int | None = None) -> None:
        self.block_id = block_id
        self.ref_cnt = ref_cnt
        self.block_hash = block_hash


class BlockPool:
    """Every block is exactly one of: free (ref 0, no hash), cached (ref 0, hashed: reusable by a
    prefix hit until evicted) or used (ref > 0). Free and cached blocks share one queue in eviction
    order: allocation takes from its head, `free` appends at its tail.

    `on_evict(block)` is called when a cached block is taken for new data, before its hash is lost.

    Blocks never used yet stand implicitly at the head of the queue and get their `Block` on
    first allocation, so a pool of 40k blocks costs nothing until it is used (the simulator runs
    thousands of instances).
    """

    def __init__(self, num_blocks: int, on_evict: Callable[[Block], None] | None = None):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self._num_blocks = num_blocks
        self.blocks: list[Block] = []  # blocks used at least once; block_id == index
        # Ordered dict as an O(1) removable queue: a prefix hit revives a block from its middle.
        self._free_queue: OrderedDict[int, None] = OrderedDict()
        self.on_evict = on_evict

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take now: never used, free, or cached-but-unused."""
        return self._num_blocks - len(self.blocks) + len(self._free_queue)

    def allocate(self, num_blocks: int) -> list[Block]:
        """Take `num_blocks` blocks from the head of the queue, each with ref count 1."""
        num_free = self.num_free_blocks
        if num_blocks > num_free:
            raise RuntimeError(f"asked for {num_blocks} blocks, {num_free} free")
        blocks = self.blocks
        first_fresh = len(blocks)
        num_fresh = min(num_blocks, self._num_blocks - first_fresh)
        taken = [Block(block_id, 1) for block_id in range(first_fresh, first_fresh + num_fresh)]
        blocks.extend(taken)
        popitem = self._free_queue.popitem
        for _ in range(num_blocks - num_fresh):
            block = blocks[popitem(last=False)[0]]
            if block.block_hash is not None:
                if self.on_evict is not None:
                    self.on_evict(block)
                block.block_hash = None
            block.ref_cnt = 1
            taken.append(block)
        return taken

    def touch(self, blocks: Iterable[Block]) -> None:
        """Add a reference to each block (a prefix hit), reviving cached blocks from the queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free_queue[block.block_id]
            block.ref_cnt += 1

    def free(self, blocks: Iterable[Block]) -> None:
        """Drop a reference from each block; blocks reaching 0 join the queue tail in the given
        order, so pass a request's blocks tail-first to have its tail evicted first."""
        queue = self._free_queue
        for block in blocks:
            if block.ref_cnt <= 0:
                raise RuntimeError(f"block {block.block_id} freed with ref count {block.ref_cnt}")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                queue[block.block_id] = None

    def num_cached_blocks(self) -> int:
        return sum(1 for b in self.blocks if b.block_hash is not None)

    def check_integrity(self) -> None:
        """free + cached + used == total, ref counts >= 0, the queue holds exactly ref-0 blocks."""
        num_unused = 0
        for block in self.blocks:
            assert block.ref_cnt >= 0, f"block {block.block_id} has ref count {block.ref_cnt}"
            in_queue = block.block_id in self._free_queue
            assert in_queue == (block.ref_cnt == 0), (
                f"block {block.block_id}: ref count {block.ref_cnt} but in_queue={in_queue}"
            )
            num_unused += block.ref_cnt == 0
        assert num_unused == len(self._free_queue), "free queue holds duplicates or unknown ids"
        assert len(self.blocks) <= self._num_blocks
