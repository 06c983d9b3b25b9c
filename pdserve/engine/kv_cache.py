"""The paged KV tensors, and how many blocks fit in the memory given to them."""

from __future__ import annotations

import math
import mmap

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
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    from pdserve.kvxfer.nixl import back_with_huge_pages  # a madvise; NIXL is not imported

    # An anonymous mapping of its own (zero pages; malloc could hand out heap memory), advised
    # onto 2 MiB pages before the first touch: a transport registering it later finds them
    # huge already (~4 ms per GiB instead of ~2.6 s to collapse), and CMA copies run at memcpy
    # speed. The tensor keeps the mapping alive.
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    cache = torch.frombuffer(_private_mapping(nbytes), dtype=dtype).view(shape)
    back_with_huge_pages(cache)
    return cache


def gpu_num_blocks(
    model_cfg: ModelConfig, cache: CacheConfig, dtype: torch.dtype, device, profile_step
) -> int:
    """Run `profile_step()` (a dummy step of the largest batch; it returns the bytes of the
    stand-in KV cache it allocated, or None) and give the KV cache what is left of
    `gpu_memory_utilization` of the card after the weights and the step's peak activations."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    scratch_bytes = profile_step() or 0
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    peak = torch.cuda.max_memory_allocated(device) - scratch_bytes
    used_by_others = total - free - torch.cuda.memory_reserved(device)
    budget = total * cache.gpu_memory_utilization - peak - used_by_others
    num_blocks = num_blocks_for_bytes(model_cfg, cache, dtype, budget)
    if num_blocks < 1:
        raise ValueError(
            f"no memory left for the KV cache: the model's peak use is {peak / 2**30:.1f} GiB of "
            f"{total / 2**30:.1f} GiB at gpu_memory_utilization={cache.gpu_memory_utilization}"
        )
    return num_blocks


@torch.inference_mode()
def profile_max_step(
    model, model_cfg: ModelConfig, num_tokens: int, num_seqs: int, block_size: int
) -> int:
    """A dummy step of `num_tokens` prompt tokens over `num_seqs` seqs (the scheduler's largest),
    logits and argmax included, on a stand-in KV cache just big enough; returns its bytes."""
    from pdserve.model.ops import AttentionMetadata

    device = model.cos_sin.device
    num_seqs = max(1, min(num_seqs, num_tokens))
    q_lens = [num_tokens // num_seqs] * num_seqs
    q_lens[-1] += num_tokens - sum(q_lens)
    blocks_per_seq = -(-max(q_lens) // block_size)
    dtype = model.model.embed_tokens.weight.dtype
    kv_cache = allocate_kv_cache(model_cfg, num_seqs * blocks_per_seq, block_size, dtype, device)
    starts = [0]
    for q in q_lens:
        starts.append(starts[-1] + q)
    block_tables = torch.arange(num_seqs * blocks_per_seq, dtype=torch.int32, device=device)
    positions = torch.cat([torch.arange(q, device=device) for q in q_lens])
    seq_lens = torch.tensor(q_lens, dtype=torch.int32, device=device)
    seq_index = torch.repeat_interleave(torch.arange(num_seqs, device=device), seq_lens)
    slots = seq_index * blocks_per_seq * block_size + positions
    meta = AttentionMetadata(
        slot_mapping=slots,
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=seq_lens,
        block_tables=block_tables.view(num_seqs, blocks_per_seq),
        max_query_len=max(q_lens),
        max_seq_len=max(q_lens),
        query_start_loc_cpu=starts,
        seq_lens_cpu=q_lens,
    )
    input_ids = torch.randint(0, model_cfg.vocab_size, (num_tokens,), device=device)
    hidden = model(input_ids, positions, kv_cache, meta)
    last = torch.tensor(starts[1:], device=device) - 1
    model.compute_logits(hidden[last]).argmax(dim=-1)
    torch.cuda.synchronize(device)
    return kv_cache.numel() * kv_cache.element_size()


def _private_mapping(nbytes: int) -> mmap.mmap:
    """Anonymous private memory (Python's default anonymous mmap is shared: no huge pages)."""
    return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
