"""Chained hashes of full KV blocks; shared by the prefix cache and the global prefix index.

A block's hash covers its own token ids and, through `parent_hash`, every token before it, so equal
hashes mean equal prefixes. The hash is stable across processes and machines (no PYTHONHASHSEED).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from hashlib import blake2b
from typing import Final

from pdserve import blake2b64

NONE_HASH: Final = 0  # parent of the first block
# The mypyc build (benchmarks/build_sim_fast.py) hashes blocks with blake2b64's word arithmetic:
# the same hashes (checked here against hashlib at import), about half the instructions.
_NATIVE: Final = blake2b64.IS_COMPILED and blake2b64.self_check()
# An empty 8-byte blake2b, copied for each block: a copy is about half the cost of building one
# from its parameters (the same state: blake2b(data, digest_size=8) == copy().update(data)).
_BLAKE2B_8: Final = blake2b(digest_size=8)


def hash_block(parent_hash: int, token_ids: Sequence[int], extra: bytes = b"") -> int:
    """64-bit hash of one full block chained on its parent's hash."""
    if _NATIVE and not extra:
        return blake2b64.hash_blocks(tuple(token_ids), len(token_ids), parent_hash, 0, 1)[0]
    h = _BLAKE2B_8.copy()
    h.update(parent_hash.to_bytes(8, "little") + array("q", token_ids).tobytes() + extra)
    return int.from_bytes(h.digest(), "little")


def hash_blocks(
    token_ids: Sequence[int], block_size: int, parent_hash: int = NONE_HASH, start: int = 0
) -> list[int]:
    """Hashes of the full blocks of `token_ids[start:]` (`start` a multiple of `block_size`).

    The same chain as `hash_block` block by block, with the token bytes made once: a block's
    digest is its hash's 8 little-endian bytes, so it feeds the next block as is, and the digests
    become ints in one unpack at the end."""
    num_blocks = (len(token_ids) - start) // block_size
    if num_blocks <= 0:
        return []
    num_tokens = num_blocks * block_size
    if _NATIVE:
        if not isinstance(token_ids, tuple):
            token_ids, start = tuple(token_ids[start : start + num_tokens]), 0
        return blake2b64.hash_blocks(token_ids, block_size, parent_hash, start, num_blocks)
    # struct's native "q" is array("q")'s layout, built about twice as fast from a sequence
    data = struct.pack(f"{num_tokens}q", *token_ids[start : start + num_tokens])
    step = 8 * block_size
    parent = parent_hash.to_bytes(8, "little")
    copy = _BLAKE2B_8.copy
    digests = []
    for begin in range(0, 8 * num_tokens, step):
        h = copy()
        h.update(parent + data[begin : begin + step])
        parent = h.digest()
        digests.append(parent)
    return list(struct.unpack(f"<{num_blocks}Q", b"".join(digests)))
