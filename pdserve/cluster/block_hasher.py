"""Prompt block hashes for routing, memoized per (parent hash, block tokens).

Requests sharing a prefix (system prompts, multi-turn chats) hash the same blocks again and
again; a dict lookup of a block's token tuple costs a fraction of a blake2b over it. The
results are exactly `hashing.hash_blocks` (the chain is the same); the memo is bounded and
dropped whole when full (cheap, and hot prefixes refill it at once). Its keys and values hold
only ints, so the garbage collector soon stops tracking them (a trie of nested dicts was no
faster and tripled the objects a full collection walks).
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
        memo = self._memo
        if len(memo) > self.max_entries:
            memo.clear()
        get, hashes, parent = memo.get, [], NONE_HASH
        # zip over one iterator `block_size` times: the full blocks as tuples, tail dropped
        for block in zip(*[iter(token_ids)] * self.block_size):
            key = (parent, block)
            parent = get(key)
            if parent is None:
                parent = memo[key] = hash_block(key[0], block)
            hashes.append(parent)
        return hashes
