"""Prompt block hashes for routing, memoized per (parent hash, block tokens).

Requests sharing a prefix (system prompts, multi-turn chats) hash the same blocks again and
again; a dict lookup of a block's token tuple costs a fraction of a blake2b over it. The
results are exactly `hashing.hash_blocks` (the chain is the same); the memo is bounded and
dropped whole when full (cheap, and hot prefixes refill it at once).
"""

from __future__ import annotations

from collections.abc import Sequence

from pdserve.hashing import NONE_HASH, hash_block


class BlockHasher:
    def __init__(self, block_size: int, max_entries: int = 1 << 16):
        self.block_size = block_size
        self.max_entries = max_entries
        self._memo: dict[tuple[int, tuple[int, ...]], int] = {}

    def __call__(self, token_ids: Sequence[int]) -> list[int]:
        """Hashes of the full blocks of `token_ids`, as `hashing.hash_blocks(token_ids, bs)`."""
        bs, memo = self.block_size, self._memo
        if len(memo) > self.max_entries:
            memo.clear()
        hashes, parent = [], NONE_HASH
        for begin in range(0, len(token_ids) - bs + 1, bs):
            key = (parent, tuple(token_ids[begin : begin + bs]))
            parent = memo.get(key)
            if parent is None:
                parent = memo[key] = hash_block(key[0], key[1])
            hashes.append(parent)
        return hashes
