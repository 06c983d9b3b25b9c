"""Prompt block hashes for routing, memoized per (parent hash, block tokens).

Requests sharing a prefix (system prompts, multi-turn chats) hash the same blocks again and
again; a dict lookup of a block's token tuple costs a fraction of a blake2b over it. The
results are exactly `hashing.hash_blocks` (the chain is the same); the memo is bounded and
dropped whole when full (cheap, and hot prefixes refill it at once). Its keys and values hold
only ints and bytes, so the garbage collector soon stops tracking them (a trie of nested dicts
was no faster and tripled the objects a full collection walks).

The same entry keeps, once asked for (`hash_and_pack`), the msgpack encoding of the block's
token ids: a SUBMIT then carries the prompt's shared blocks as bytes already packed instead of
packing every token again (msgpack packs a Python int in ~25 ns; a 512-token prefix is
~13 us per request).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from pdserve.hashing import NONE_HASH, hash_block


class BlockHasher:
    def __init__(self, block_size: int, max_entries: int = 1 << 16):
        self.block_size = block_size
        self.max_entries = max_entries
        # (parent hash, block tokens) -> (block hash, msgpack of the tokens or None: not asked)
        self._memo: dict[tuple[int, tuple[int, ...]], tuple[int, bytes | None]] = {}
        self._packer = msgpack.Packer(use_bin_type=True)  # one thread: the owner's
        self._header_len = len(self._packer.pack_array_header(block_size))

    def __call__(self, token_ids: Sequence[int]) -> list[int]:
        """Hashes of the full blocks of `token_ids`, as `hashing.hash_blocks(token_ids, bs)`."""
        memo = self._memo
        if len(memo) > self.max_entries:
            memo.clear()
        get, hashes, parent = memo.get, [], NONE_HASH
        # zip over one iterator `block_size` times: the full blocks as tuples, tail dropped
        for block in zip(*[iter(token_ids)] * self.block_size):
            key = (parent, block)
            entry = get(key)
            if entry is None:
                entry = memo[key] = (hash_block(parent, block), None)
            parent = entry[0]
            hashes.append(parent)
        return hashes

    def hash_and_pack(self, token_ids: Sequence[int]) -> tuple[list[int], bytes]:
        """(`self(token_ids)`, the msgpack encoding of the full blocks' token ids, one after
        another without an array header). A prompt's msgpack array is its header, these bytes,
        then the tail's ints."""
        memo = self._memo
        if len(memo) > self.max_entries:
            memo.clear()
        pack, skip = self._packer.pack, self._header_len
        get, hashes, packed, parent = memo.get, [], [], NONE_HASH
        for block in zip(*[iter(token_ids)] * self.block_size):
            key = (parent, block)
            entry = get(key)
            if entry is None or entry[1] is None:
                block_hash = hash_block(parent, block) if entry is None else entry[0]
                entry = memo[key] = (block_hash, pack(block)[skip:])
            parent = entry[0]
            hashes.append(parent)
            packed.append(entry[1])
        return hashes, b"".join(packed)
