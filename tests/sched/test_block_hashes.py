"""Block hashes are a wire format (instances, controller and simulator compare them): pinned
values, and the one-pass `hash_blocks` equals the block-by-block chain of `hash_block`."""

from __future__ import annotations

from pdserve.hashing import NONE_HASH, hash_block, hash_blocks


def chain(token_ids, block_size, parent=NONE_HASH, start=0):
    out = []
    for begin in range(start, len(token_ids) - block_size + 1, block_size):
        parent = hash_block(parent, token_ids[begin : begin + block_size])
        out.append(parent)
    return out


def test_hash_values_are_pinned():
    assert hash_blocks(list(range(40)), 16) == [15419130808853295947, 13931401434043050494]
    assert hash_blocks(list(range(100, 140)), 16, 12345, 16) == [14225497907387258349]
    assert hash_block(5, range(16), b"x") == 8412796838194518981


def test_hash_blocks_is_the_chain_of_hash_block():
    tokens = tuple(range(7, 7 + 101))
    for block_size in (1, 4, 16, 101, 200):
        assert hash_blocks(tokens, block_size) == chain(tokens, block_size)
    assert hash_blocks(tokens, 16, 99, 32) == chain(tokens, 16, 99, 32)
    assert hash_blocks([2**62, 0, 5], 1) == chain([2**62, 0, 5], 1)
    assert hash_blocks((), 16) == []
