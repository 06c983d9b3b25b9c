"""BLAKE2b with an 8-byte digest, as 64-bit integer arithmetic, for the mypyc build.

`pdserve.hashing` hashes a block with `hashlib.blake2b(digest_size=8)` over the parent's 8
little-endian bytes and the block's token ids as 8-byte little-endian integers. That is 1 +
block_size 64-bit words, which is what BLAKE2b's compression reads as its message words: this
module computes the same digest (RFC 7693) straight from the ints, with no bytes built, no
hasher object and no call into hashlib per block. Compiled by mypyc (benchmarks/
build_sim_fast.py), `i64` is a machine word whose `+` wraps as BLAKE2b's additions do; about
half the instructions of the hashlib path. Interpreted, Python ints do not wrap: the results
would be wrong, so `pdserve.hashing` uses this module only when it is compiled
(`IS_COMPILED`) and it gives hashlib's hashes on its test vectors (`self_check`).
"""

from __future__ import annotations

from hashlib import blake2b
from types import FunctionType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # annotations only (mypy_extensions comes with mypy; the engine needs neither)
    from mypy_extensions import i64

_PARAM0: Final[i64] = 0x01010008  # h0 ^= depth 1, fanout 1, no key, digest length 8


def _iv(hi: i64, lo: i64) -> i64:
    """A 64-bit constant from its 32-bit halves: mypyc keeps an int literal of 62 bits or more
    as a Python int and converts it at each use; this one folds to an immediate in C."""
    return (hi << 32) | lo


def _ivs() -> tuple[i64, i64, i64, i64, i64, i64, i64, i64]:
    """BLAKE2b's initialization vector."""
    return (
        _iv(0x6A09E667, 0xF3BCC908),
        _iv(0xBB67AE85, 0x84CAA73B),
        _iv(0x3C6EF372, 0xFE94F82B),
        _iv(0xA54FF53A, 0x5F1D36F1),
        _iv(0x510E527F, 0xADE682D1),
        _iv(0x9B05688C, 0x2B3E6C1F),
        _iv(0x1F83D9AB, 0xFB41BD6B),
        _iv(0x5BE0CD19, 0x137E2179),
    )


# fmt: off
def _g(a: i64, b: i64, c: i64, d: i64, x: i64, y: i64) -> tuple[i64, i64, i64, i64]:
    """The mixing function G; a right rotation by n is a logical shift (an arithmetic shift
    masked) or'ed with the left shift by 64 - n."""
    a = a + b + x
    d ^= a
    d = ((d >> 32) & 0xFFFFFFFF) | (d << 32)
    c = c + d
    b ^= c
    b = ((b >> 24) & 0xFFFFFFFFFF) | (b << 40)
    a = a + b + y
    d ^= a
    d = ((d >> 16) & 0xFFFFFFFFFFFF) | (d << 48)
    c = c + d
    b ^= c
    b = ((b >> 63) & 1) | (b << 1)
    return a, b, c, d


def _compress(
    h0: i64, h1: i64, h2: i64, h3: i64, h4: i64, h5: i64, h6: i64, h7: i64,
    m0: i64, m1: i64, m2: i64, m3: i64, m4: i64, m5: i64, m6: i64, m7: i64,
    m8: i64, m9: i64, m10: i64, m11: i64, m12: i64, m13: i64, m14: i64, m15: i64,
    num_bytes: i64,
    is_last: bool,
) -> tuple[i64, i64, i64, i64, i64, i64, i64, i64]:
    """The compression of one 128-byte message block (`num_bytes`: the count so far)."""
    v0, v1, v2, v3, v4, v5, v6, v7 = h0, h1, h2, h3, h4, h5, h6, h7
    v8, v9, v10, v11, v12, v13, v14, v15 = _ivs()
    v12 ^= num_bytes
    if is_last:
        v14 ^= -1
    # round 0: columns, then diagonals; message words in sigma[0] order
    v0, v4, v8, v12 = _g(v0, v4, v8, v12, m0, m1)
    v1, v5, v9, v13 = _g(v1, v5, v9, v13, m2, m3)
    v2, v6, v10, v14 = _g(v2, v6, v10, v14, m4, m5)
    v3, v7, v11, v15 = _g(v3, v7, v11, v15, m6, m7)
    v0, v5, v10, v15 = _g(v0, v5, v10, v15, m8, m9)
    v1, v6, v11, v12 = _g(v1, v6, v11, v12, m10, m11)
    v2, v7, v8, v13 = _g(v2, v7, v8, v13, m12, m13)
    v3, v4, v9, v14 = _g(v3, v4, v9, v14, m14, m15)
    # round 1: columns, then diagonals; message words in sigma[1] order
    v0, v4, v8, v12 = _g(v0, v4, v8, v12, m14, m10)
    v1, v5, v9, v13 = _g(v1, v5, v9, v13, m4, m8)
    v2, v6, v10, v14 = _g(v2, v6, v10, v14, m9, m15)
    v3, v7, v11, v15 = _g(v3, v7, v11, v15, m13, m6)
    v0, v5, v10, v15 = _g(v0, v5, v10, v15, m1, m12)
    v1, v6, v11, v12 = _g(v1, v6, v11, v12, m0, m2)
    v2, v7, v8, v13 = _g(v2, v7, v8, v13, m11, m7)
    v3, v4, v9, v14 = _g(v3, v4, v9, v14, m5, m3)
    # round 2: columns, then diagonals; message words in sigma[2] order
    v0, v4, v8, v12 = _g(v0, v4, v8, v12, m11, m8)
    v1, v5, v9, v13 = _g(v1, v5, v9, v13, m12, m0)
    v2, v6, v10, v14 = _g(v2, v6, v10, v14, m5, m2)
    v3, v7, v11, v15 = _g(v3, v7, v11, v15, m15, m13)
    v0, v5, v10, v15 = _g(v0, v5, v10, v15, m10, m14)
    v1, v6, v11, v12 = _g(v1, v6, v11, v12, m3, m6)
    v2, v7, v8, v13 = _g(v2, v7, v8, v13, m7, m1)
    v3, v4, v9, v14 = _g(v3, v4, v9, v14, m9, m4)
    # round 3: columns, then diagonals; message words in sigma[3] order
    v0, v4, v8, v12 = _g(v0, v4, v8, v12, m7, m9)
    v1, v5, v9, v13 = _g(v1, v5, v9, v13, m3, m1)
    v2, v6, v10, v14 = _g(v2, v6, v10, v14, m13, m12)
    v3, v7, v11, v15 = _g(v3, v7, v11, v15, m11, m14)
    v0, v5, v10, v15 = _g(v0, v5, v10, v15, m2, m6)
    v1, v6, v11, v12 = _g(v1, v6, v11, v12, m5, m10)
    v2, v7, v8, v13 = _g(v2, v7, v8, v13, m4, m0)
    v3, v4, v9, v14 = _g(v3, v4, v9, v14, m15, m8)
    # round 4: columns, then diagonals; message words in sigma[4] order
    v0, v4, v8, v12 = _g(v0, v4, v8, v12, m9, m0)
    v1, v5, v9, v13 = _g(v1, v5, v9, v13, m5, m7)
    v2, v6, v10, v14 = _g(v2, v6, v10, v14, m2, m4)
    v3, v7, v11, v15 = _g(v3, v7, v11, v15, m10, m15)
    v0, v5, v10, v15 = _g(v0, v5, v10, v15, m14, m1)
    v1, v6, v11, v12 = _g(v1, v6, v11, v12, m11, m12)
    v2, v7, v8, v13 = _g(v2, v7, v8, v13, m6, m8)
    v3, v4, v9, v14 = _g(v3, v4, v9, v14, m3, m13)
    # round 5: columns, then diagonals; message words in sigma[5] order
    v0, v4, v8, v12 = _g(v0, v4, v8, v12, m2, m12)
    v1, v5, v9, v13 = _g(v1, v5, v9, v13, m6, m10)
    v2, v6, v10, v14 = _g(v2, v6, v10, v14, m0, m11)
    v3, v7, v11, v15 = _g(v3, v7, v11, v15, m8, m3)
    v0, v5, v10, v15 = _g(v0, v5, v10, v15, m4, m13)
    v1, v6, v11, v12 = _g(v1, v6, v11, v12, m7, m5)
    v2, v7, v8, v13 = _g(v2, v7, v8, v13, m15, m14)
    v3, v4, v9, v14 = _g(v3, v4, v9, v14, m1, m9)
    # round 6: columns, then diagonals; message words in sigma[6] order
    v0, v4, v8, v12 = _g(v0, v4, v8, v12, m12, m5)
    v1, v5, v9, v13 = _g(v1, v5, v9, v13, m1, m15)
    v2, v6, v10, v14 = _g(v2, v6, v10, v14, m14, m13)
    v3, v7, v11, v15 = _g(v3, v7, v11, v15, m4, m10)
    v0, v5, v10, v15 = _g(v0, v5, v10, v15, m0, m7)
    v1, v6, v11, v12 = _g(v1, v6, v11, v12, m6, m3)
    v2, v7, v8, v13 = _g(v2, v7, v8, v13, m9, m2)
    v3, v4, v9, v14 = _g(v3, v4, v9, v14, m8, m11)
    # round 7: columns, then diagonals; message words in sigma[7] order
    v0, v4, v8, v12 = _g(v0, v4, v8, v12, m13, m11)
    v1, v5, v9, v13 = _g(v1, v5, v9, v13, m7, m14)
    v2, v6, v10, v14 = _g(v2, v6, v10, v14, m12, m1)
    v3, v7, v11, v15 = _g(v3, v7, v11, v15, m3, m9)
    v0, v5, v10, v15 = _g(v0, v5, v10, v15, m5, m0)
    v1, v6, v11, v12 = _g(v1, v6, v11, v12, m15, m4)
    v2, v7, v8, v13 = _g(v2, v7, v8, v13, m8, m6)
    v3, v4, v9, v14 = _g(v3, v4, v9, v14, m2, m10)
    # round 8: columns, then diagonals; message words in sigma[8] order
    v0, v4, v8, v12 = _g(v0, v4, v8, v12, m6, m15)
    v1, v5, v9, v13 = _g(v1, v5, v9, v13, m14, m9)
    v2, v6, v10, v14 = _g(v2, v6, v10, v14, m11, m3)
    v3, v7, v11, v15 = _g(v3, v7, v11, v15, m0, m8)
    v0, v5, v10, v15 = _g(v0, v5, v10, v15, m12, m2)
    v1, v6, v11, v12 = _g(v1, v6, v11, v12, m13, m7)
    v2, v7, v8, v13 = _g(v2, v7, v8, v13, m1, m4)
    v3, v4, v9, v14 = _g(v3, v4, v9, v14, m10, m5)
    # round 9: columns, then diagonals; message words in sigma[9] order
    v0, v4, v8, v12 = _g(v0, v4, v8, v12, m10, m2)
    v1, v5, v9, v13 = _g(v1, v5, v9, v13, m8, m4)
    v2, v6, v10, v14 = _g(v2, v6, v10, v14, m7, m6)
    v3, v7, v11, v15 = _g(v3, v7, v11, v15, m1, m5)
    v0, v5, v10, v15 = _g(v0, v5, v10, v15, m15, m11)
    v1, v6, v11, v12 = _g(v1, v6, v11, v12, m9, m14)
    v2, v7, v8, v13 = _g(v2, v7, v8, v13, m3, m12)
    v3, v4, v9, v14 = _g(v3, v4, v9, v14, m13, m0)
    # round 10: columns, then diagonals; message words in sigma[0] order
    v0, v4, v8, v12 = _g(v0, v4, v8, v12, m0, m1)
    v1, v5, v9, v13 = _g(v1, v5, v9, v13, m2, m3)
    v2, v6, v10, v14 = _g(v2, v6, v10, v14, m4, m5)
    v3, v7, v11, v15 = _g(v3, v7, v11, v15, m6, m7)
    v0, v5, v10, v15 = _g(v0, v5, v10, v15, m8, m9)
    v1, v6, v11, v12 = _g(v1, v6, v11, v12, m10, m11)
    v2, v7, v8, v13 = _g(v2, v7, v8, v13, m12, m13)
    v3, v4, v9, v14 = _g(v3, v4, v9, v14, m14, m15)
    # round 11: columns, then diagonals; message words in sigma[1] order
    v0, v4, v8, v12 = _g(v0, v4, v8, v12, m14, m10)
    v1, v5, v9, v13 = _g(v1, v5, v9, v13, m4, m8)
    v2, v6, v10, v14 = _g(v2, v6, v10, v14, m9, m15)
    v3, v7, v11, v15 = _g(v3, v7, v11, v15, m13, m6)
    v0, v5, v10, v15 = _g(v0, v5, v10, v15, m1, m12)
    v1, v6, v11, v12 = _g(v1, v6, v11, v12, m0, m2)
    v2, v7, v8, v13 = _g(v2, v7, v8, v13, m11, m7)
    v3, v4, v9, v14 = _g(v3, v4, v9, v14, m5, m3)
    return (h0 ^ v0 ^ v8, h1 ^ v1 ^ v9, h2 ^ v2 ^ v10, h3 ^ v3 ^ v11, h4 ^ v4 ^ v12,
            h5 ^ v5 ^ v13, h6 ^ v6 ^ v14, h7 ^ v7 ^ v15)


# fmt: on


def _word(token_ids: tuple[int, ...], begin: i64, block_size: i64, parent: i64, w: i64) -> i64:
    """Message word `w` of a block's data: the parent hash, its tokens, then zero padding."""
    if w == 0:
        return parent
    if w <= block_size:
        return token_ids[begin + w - 1]
    return 0


def hash_blocks(
    token_ids: tuple[int, ...], block_size: int, parent_hash: int, start: int, num_blocks: int
) -> list[int]:
    """`pdserve.hashing.hash_blocks`: the chained hashes of `num_blocks` full blocks from
    `token_ids[start]` on, the first chained on `parent_hash` (unsigned 64-bit)."""
    parent: i64 = parent_hash - (1 << 64) if parent_hash >= 1 << 63 else parent_hash
    num_words: i64 = block_size + 1
    hashes: list[int] = []
    begin: i64 = start
    for _ in range(num_blocks):
        h0, h1, h2, h3, h4, h5, h6, h7 = _ivs()
        h0 ^= _PARAM0
        w: i64 = 0
        while True:  # 128 bytes a time; the last block (zero padded) is compressed as last
            is_last = w + 16 >= num_words
            num_bytes: i64 = 8 * num_words if is_last else 8 * (w + 16)
            h0, h1, h2, h3, h4, h5, h6, h7 = _compress(
                h0, h1, h2, h3, h4, h5, h6, h7,
                _word(token_ids, begin, block_size, parent, w),
                _word(token_ids, begin, block_size, parent, w + 1),
                _word(token_ids, begin, block_size, parent, w + 2),
                _word(token_ids, begin, block_size, parent, w + 3),
                _word(token_ids, begin, block_size, parent, w + 4),
                _word(token_ids, begin, block_size, parent, w + 5),
                _word(token_ids, begin, block_size, parent, w + 6),
                _word(token_ids, begin, block_size, parent, w + 7),
                _word(token_ids, begin, block_size, parent, w + 8),
                _word(token_ids, begin, block_size, parent, w + 9),
                _word(token_ids, begin, block_size, parent, w + 10),
                _word(token_ids, begin, block_size, parent, w + 11),
                _word(token_ids, begin, block_size, parent, w + 12),
                _word(token_ids, begin, block_size, parent, w + 13),
                _word(token_ids, begin, block_size, parent, w + 14),
                _word(token_ids, begin, block_size, parent, w + 15),
                num_bytes, is_last,
            )  # fmt: skip
            if is_last:
                break
            w += 16
        parent = h0  # the digest: h0's 8 little-endian bytes
        value: int = h0
        hashes.append(value + (1 << 64) if value < 0 else value)
        begin += block_size
    return hashes


IS_COMPILED: Final[bool] = not isinstance(_g, FunctionType)


def self_check() -> bool:
    """Whether `hash_blocks` gives hashlib's hashes: blocks of 1, 15, 16 and 17 tokens (one or
    two compressions, a full last one), token ids and parent hashes at the 64-bit limits."""
    tokens = (0, 1, 2**31 - 1, 2**62, -(2**63), 2**63 - 1, *range(100, 150))
    for block_size in (1, 15, 16, 17):
        for first_parent in (0, 2**64 - 1, 2**63, 123456789):
            expected, parent = [], first_parent
            for begin in range(0, len(tokens) - block_size + 1, block_size):
                words = (parent, *tokens[begin : begin + block_size])
                data = b"".join((w % 2**64).to_bytes(8, "little") for w in words)
                parent = int.from_bytes(blake2b(data, digest_size=8).digest(), "little")
                expected.append(parent)
            num_blocks = len(tokens) // block_size
            if hash_blocks(tokens, block_size, first_parent, 0, num_blocks) != expected:
                return False
    return True
