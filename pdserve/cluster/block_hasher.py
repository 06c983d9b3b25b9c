"""Prompt block hashes for routing, memoized along the chain of blocks.

Requests sharing a prefix (system prompts, multi-turn chats) hash the same blocks again and
again; a dict lookup of a block's token tuple costs a fraction of a blake2b over it. The memo is
a trie: each level maps a block's token ids to (its chained hash, the next level), so a lookup
hashes one block tuple and never rebuilds a (parent, tokens) key. The results are exactly
`hashing.hash_blocks` (the chain is the same); the memo is bounded and dropped whole when full
(cheap, and hot prefixes refill it at once).
"""

from __future__ import annotations

from collections.abc import Sequence

from pdserve.hashing import NONE_HASH, hash_block

_Level = dict[tuple[int, ...], tuple[int, "_Level"]]  # block token ids -> (hash, next level)


class BlockHasher:
    def __init__(self, block_size: int, max_entries: int = 1 << 16):
        self.block_size = block_size
        self.max_entries = max_entries
        self._root: _Level = {}
        self._num_entries = 0

    def __call__(self, token_ids: Sequence[int]) -> list[int]:
        """Hashes of the full blocks of `token_ids`, as `hashing.hash_blocks(token_ids, bs)`."""
        if self._num_entries > self.max_entries:
            self._root, self._num_entries = {}, 0
        hashes, level, parent = [], self._root, NONE_HASH
        # zip over one iterator `block_size` times: the full blocks as tuples, tail dropped
        for block in zip(*[iter(token_ids)] * self.block_size):
            entry = level.get(block)
            if entry is None:
                parent = hash_block(parent, block)
                entry = level[block] = (parent, {})
                self._num_entries += 1
            else:
                parent = entry[0]
            hashes.append(parent)
            level = entry[1]
        return hashes
