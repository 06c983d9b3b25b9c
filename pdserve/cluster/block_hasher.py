"""Prompt block hashes for routing, memoized per (parent hash, block tokens), with the run of
blocks that recent prompts starting alike shared kept whole.

Requests sharing a prefix (system prompts, multi-turn chats) hash the same blocks again and
again; a dict lookup of a block's token tuple costs a fraction of a blake2b over it, and one
comparison of a whole shared run a fraction of its blocks' lookups:

    prompt      |b0|b1| ... |b31|q0|q1|tail        chain of b0: the blocks the last two prompts
    chain[b0]   |b0|b1| ... |b31|                  starting with b0's tokens had in common
                 └ one tuple compare: equal -> its hashes at once; q0, q1 through the memo

The chain of a first block is re-cut after every prompt starting with it to what that prompt
and the one before shared (found by bisection over the two hash lists: a chained hash equal at
block i means blocks 0..i equal), so an odd prompt shortens it for one prompt only; a first
block seen once has an empty chain. A chain is used only when the prompt's tokens equal it, so
the results are exactly `hashing.hash_blocks` (the chain is the same). The memo (in entries)
and the chains (in tokens and hashes held, as many as the memo's entries hold tokens) are
bounded and dropped whole when full (cheap, and hot prefixes refill them at once); they hold
ints, bytes and tuples of them, which the garbage collector soon stops tracking.

The memo entry also keeps, once asked for (`hash_and_pack`), the msgpack encoding of the
block's token ids: a SUBMIT then carries the prompt's full blocks as bytes already packed
instead of packing every token again (msgpack packs a Python int in ~25 ns).
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
        # first block's tokens -> (the chain's tokens, their block hashes, their msgpack per
        # block or None, the hashes of the last prompt starting with that block)
        self._chains: dict[tuple[int, ...], tuple] = {}
        self._chains_size = 0  # tokens and hashes the chains hold: bounded like the memo's
        self._packer = msgpack.Packer(use_bin_type=True)  # one thread: the owner's
        self._header_len = len(self._packer.pack_array_header(block_size))

    def __call__(self, token_ids: Sequence[int]) -> list[int]:
        """Hashes of the full blocks of `token_ids`, as `hashing.hash_blocks(token_ids, bs)`."""
        return self._hash(token_ids, False)[0]

    def hash_and_pack(self, token_ids: Sequence[int]) -> tuple[list[int], bytes]:
        """(`self(token_ids)`, the msgpack encoding of the full blocks' token ids, one after
        another without an array header). A prompt's msgpack array is its header, these bytes,
        then the tail's ints."""
        hashes, packed = self._hash(token_ids, True)
        return hashes, b"".join(packed)

    def _hash(self, token_ids: Sequence[int], with_packed: bool) -> tuple[list[int], list]:
        tokens = token_ids if type(token_ids) is tuple else tuple(token_ids)
        block_size = self.block_size
        end = len(tokens) - len(tokens) % block_size  # past the last full block
        if not end:
            return [], []
        if len(self._memo) > self.max_entries:
            self._memo.clear()
        chains = self._chains
        if self._chains_size > self.max_entries * block_size:
            chains.clear()
            self._chains_size = 0
        first = tokens[:block_size]
        chain = chains.get(first)
        hashes: list[int] = []
        packed: list[bytes] = []
        if chain is not None and (chain[2] is not None or not with_packed):
            chain_tokens = chain[0]
            if len(chain_tokens) <= end and tokens[: len(chain_tokens)] == chain_tokens:
                hashes = list(chain[1])
                if with_packed:
                    packed = list(chain[2])
        start = len(hashes) * block_size
        if start < end:
            parent = hashes[-1] if hashes else NONE_HASH
            self._blocks(tokens[start:end], parent, hashes, packed if with_packed else None)
        self._recut(first, chain, tokens, hashes, packed if with_packed else None)
        return hashes, packed

    def _blocks(self, tokens: tuple, parent: int, hashes: list, packed: list | None) -> None:
        """Append the hashes (and msgpack, if `packed` is a list) of `tokens` (whole blocks)
        chained on `parent`, block by block through the memo."""
        memo = self._memo
        get = memo.get
        if packed is None:
            # zip over one iterator `block_size` times: the blocks as tuples
            for block in zip(*[iter(tokens)] * self.block_size):
                key = (parent, block)
                entry = get(key)
                if entry is None:
                    entry = memo[key] = (hash_block(parent, block), None)
                parent = entry[0]
                hashes.append(parent)
            return
        pack, skip = self._packer.pack, self._header_len
        for block in zip(*[iter(tokens)] * self.block_size):
            key = (parent, block)
            entry = get(key)
            if entry is None or entry[1] is None:
                block_hash = hash_block(parent, block) if entry is None else entry[0]
                entry = memo[key] = (block_hash, pack(block)[skip:])
            parent = entry[0]
            hashes.append(parent)
            packed.append(entry[1])

    def _recut(self, first: tuple, chain, tokens: tuple, hashes: list, packed) -> None:
        """The chain of `first` := the blocks this prompt and the last one starting with
        `first` share (at first sight none: the prompt's hashes only, for the next one)."""
        own = tuple(hashes)
        if chain is None:
            self._set_chain(first, None, ((), (), () if packed is not None else None, own))
            return
        last = chain[3]
        lo, hi = 0, min(len(hashes), len(last))  # blocks [0, lo) equal; [hi, ...) not known
        if hi and hashes[hi - 1] == last[hi - 1]:
            lo = hi
        else:
            while hi - lo > 1:  # block lo-1 equal (or lo == 0), block hi-1 not
                mid = (lo + hi) // 2
                if hashes[mid - 1] == last[mid - 1]:
                    lo = mid
                else:
                    hi = mid
        if len(chain[1]) == lo and (chain[2] is not None or packed is None):
            self._set_chain(first, chain, (chain[0], chain[1], chain[2], own))
            return
        cut = tuple(packed[:lo]) if packed is not None else None
        self._set_chain(first, chain, (tokens[: lo * self.block_size], own[:lo], cut, own))

    def _set_chain(self, first: tuple, old, new: tuple) -> None:
        if old is None:
            self._chains_size += len(first)
        else:
            self._chains_size -= len(old[0]) + len(old[3])
        self._chains_size += len(new[0]) + len(new[3])
        self._chains[first] = new
