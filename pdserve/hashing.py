"""Chained hashes of full KV blocks; shared by the prefix cache and the global prefix index.

A block's hash covers its own token ids and, through `parent_hash`, every token before it, so equal
hashes mean equal prefixes. The hash is stable across processes and machines (no PYTHONHASHSEED).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

NONE_HASH = 0  # parent of the first block


def hash_block(parent_hash: int, token_ids: Sequence[int], extra: bytes = b"") -> int:
    """64-bit hash of one full block chained on its parent's hash."""
    h = hashlib.blake2b(digest_size=8)
    h.update(parent_hash.to_bytes(8, "little"))
    h.update(array("q", token_ids).tobytes())
    if extra:
        h.update(extra)
    return int.from_bytes(h.digest(), "little")


def hash_blocks(
    token_ids: Sequence[int], block_size: int, parent_hash: int = NONE_HASH, start: int = 0
) -> list[int]:
    """Hashes of the full blocks of `token_ids[start:]` (`start` a multiple of `block_size`)."""
    hashes = []
    for begin in range(start, len(token_ids) - block_size + 1, block_size):
        parent_hash = hash_block(parent_hash, token_ids[begin : begin + block_size])
        hashes.append(parent_hash)
    return hashes
