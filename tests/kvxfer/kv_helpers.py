"""Small KV caches for the kvxfer tests: [num_layers, num_blocks, 2, block_size, kv_heads,
head_dim] float32, so every block's bytes are easy to tell apart and compare exactly."""

from __future__ import annotations

import torch

NUM_LAYERS, NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM = 3, 10, 2, 2, 4
BLOCK_BYTES = 2 * BLOCK_SIZE * KV_HEADS * HEAD_DIM * 4  # float32: 128 bytes per block and layer
POISON = -7.0


def kv_cache(fill: float | None = None, seed: int = 0, num_blocks: int = NUM_BLOCKS):
    shape = (NUM_LAYERS, num_blocks, 2, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    if fill is not None:
        return torch.full(shape, fill)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def assert_moved_exactly(
    src, dst, src_ids, dst_ids, layers=range(NUM_LAYERS), poison: float = POISON
):
    """dst holds src's blocks at the listed (layer, block) places and `poison` everywhere else."""
    expected = torch.full_like(dst, poison)
    for layer in layers:
        expected[layer, list(dst_ids)] = src[layer, list(src_ids)]
    assert torch.equal(dst, expected)
