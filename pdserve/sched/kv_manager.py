"""Per-request block tables on top of the block pool and the prefix cache."""

from __future__ import annotations

from collections.abc import Sequence

from pdserve.sched.block_pool import BlockPool
from pdserve.sched.prefix_cache import PrefixCache
from pdserve.sched.request import SchedRequest


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVManager:
    """Owns which blocks each request holds. Contract: `allocate_slots` either takes every block a
    step needs or none; `free` returns all of a request's blocks (tail first, so the tail is evicted
    before the shared head); cached blocks keep their content until the pool reuses them."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.prefix_cache = PrefixCache(self.pool, block_size, enable_prefix_caching)
        # request id -> its block table: the request's own `block_ids` list (not a copy)
        self._blocks: dict[str, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    def max_tokens_fit(self) -> int:
        return self.pool.num_blocks * self.block_size

    def match_prefix(self, req: SchedRequest) -> list[int]:
        """Cached block ids of the longest prefix of `req`, leaving at least one token to compute
        (its logits are needed to sample). Prompt-logprob requests compute every token."""
        if req.sampling.prompt_logprobs is not None:
            return []
        max_blocks = (len(req.token_ids) - 1) // self.block_size
        return self.prefix_cache.match(req.block_hashes, max_blocks)

    def allocate_slots(
        self, req: SchedRequest, num_new_tokens: int, hit_blocks: Sequence[int] = ()
    ) -> bool:
        """Make room for `num_new_tokens` more tokens after `req.num_computed_tokens` (plus the
        prefix hit `hit_blocks`, taken by a request that holds no blocks yet)."""
        held = self._blocks.get(req.request_id)
        block_size = self.block_size
        if not hit_blocks:  # a running request's next chunk, or an admission without a hit
            num_held = len(held) if held is not None else 0
            num_needed = -(-(req.num_computed_tokens + num_new_tokens) // block_size) - num_held
            if num_needed <= 0:
                return True  # the common decode step: the last block still has room
            if num_needed > self.pool.num_free_blocks:
                return False
            new_blocks = self.pool.allocate(num_needed)
            if held is None:
                held = self._blocks[req.request_id] = req.block_ids
            held.extend(new_blocks)
            return True
        num_computed = req.num_computed_tokens + len(hit_blocks) * block_size
        num_held = len(held) if held is not None else 0
        num_needed = cdiv(num_computed + num_new_tokens, block_size) - num_held - len(hit_blocks)
        # Hit blocks nobody uses sit in the free queue: reviving them takes from the same supply.
        ref_cnts = self.pool.ref_cnts
        num_revived = 0
        for block_id in hit_blocks:
            if ref_cnts[block_id] == 0:
                num_revived += 1
        if num_needed > self.pool.num_free_blocks - num_revived:
            return False
        self.pool.touch(hit_blocks)
        new_blocks = self.pool.allocate(max(num_needed, 0))
        if held is None:
            held = self._blocks[req.request_id] = req.block_ids
        held.extend(hit_blocks)
        held.extend(new_blocks)
        req.num_published_blocks = len(hit_blocks)
        return True

    def publish_full_blocks(self, req: SchedRequest, num_computed_tokens: int) -> None:
        """Put the request's full blocks whose KV is (being) computed into the prefix cache."""
        end = num_computed_tokens // self.block_size
        num_hashes = len(req.block_hashes)
        if num_hashes < end:
            end = num_hashes
        start = req.num_published_blocks
        if end <= start:
            return  # most steps: no block filled up
        if not req.block_ids:
            return
        self.prefix_cache.insert_run(req.block_ids, req.block_hashes, start, end)
        req.num_published_blocks = end

    def free(self, req: SchedRequest) -> None:
        blocks = self._blocks.get(req.request_id)
        if blocks is not None:
            del self._blocks[req.request_id]
            self.pool.free(blocks, tail_first=True)
        req.block_ids.clear()
        req.num_published_blocks = 0

    def num_blocks_held(self, request_id: str) -> int:
        return len(self._blocks.get(request_id, ()))

    def check_integrity(self) -> None:
        self.pool.check_integrity()
        self.prefix_cache.check_integrity()
        ref_cnts = self.pool.ref_cnts
        refs = [0] * len(ref_cnts)  # holders per block id
        for blocks in self._blocks.values():
            for block_id in blocks:
                refs[block_id] += 1
        for block_id, ref_cnt in enumerate(ref_cnts):
            assert refs[block_id] == ref_cnt, (
                f"block {block_id}: {refs[block_id]} holders, ref count {ref_cnt}"
            )
