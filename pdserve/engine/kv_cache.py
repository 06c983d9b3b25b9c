"""The paged KV tensors, and how many blocks fit in the memory given to them."""

from __future__ import annotations

import torch

from pdserve.config import CacheConfig, ModelConfig


def block_bytes(model: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of one block over all layers (K and V)."""
    element = torch.empty((), dtype=dtype).element_size()
    return model.num_layers * 2 * block_size * model.num_kv_heads * model.head_dim * element


def num_blocks_for_bytes(
    model: ModelConfig, cache: CacheConfig, dtype: torch.dtype, nbytes: int
) -> int:
    return max(int(nbytes // block_bytes(model, cache.block_size, dtype)), 0)


def allocate_kv_cache(
    model: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device
) -> torch.Tensor:
    """[num_layers, num_blocks, 2, block_size, num_kv_heads, head_dim]: a block's K and V of one
    layer are one contiguous chunk, and the same block over all layers is num_layers chunks at a
    fixed stride, so transports move a run of blocks in one descriptor per layer."""
    shape = (model.num_layers, num_blocks, 2, block_size, model.num_kv_heads, model.head_dim)
    return torch.zeros(shape, dtype=dtype, device=device)


def gpu_num_blocks(
    model_cfg: ModelConfig, cache: CacheConfig, dtype: torch.dtype, device, profile_step
) -> int:
    """Run `profile_step()` (a dummy step of the largest batch) and give the KV cache what is left
    of `gpu_memory_utilization` of the card."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    profile_step()
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    peak = torch.cuda.max_memory_allocated(device)
    used_by_others = total - free - torch.cuda.memory_reserved(device)
    budget = total * cache.gpu_memory_utilization - peak - used_by_others
    num_blocks = num_blocks_for_bytes(model_cfg, cache, dtype, budget)
    if num_blocks < 1:
        raise ValueError(
            f"no memory left for the KV cache: the model's peak use is {peak / 2**30:.1f} GiB of "
            f"{total / 2**30:.1f} GiB at gpu_memory_utilization={cache.gpu_memory_utilization}"
        )
    return num_blocks
