"""Random paged-attention problems shared by the CPU (interpreter) and GPU kernel tests."""

from __future__ import annotations

import torch

from pdserve.model.ops import AttentionMetadata


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives inf."""
    out64, ref64 = out.double(), ref.double()
    if not torch.isfinite(out64).all():
        return float("inf")
    return ((out64 - ref64).norm() / ref64.norm().clamp_min(1e-30)).item()


def make_problem(
    seq_lens: list[int],
    q_lens: list[int],
    *,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: str,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """q [T, H, D], one layer's kv_cache with each sequence on shuffled blocks, and its metadata.

    Sequence i has context seq_lens[i], of which the last q_lens[i] tokens are new (q).
    Unused blocks hold random data too, so a wrong block index shows up as a wrong result.
    """
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [(s + block_size - 1) // block_size for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    max_blocks = max(max(blocks_per_seq), 1)
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    block_tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    used = 0
    for i, n in enumerate(blocks_per_seq):
        block_tables[i, :n] = torch.tensor(perm[used : used + n], dtype=torch.int32)
        used += n
    kv_shape = (num_blocks, 2, block_size, num_kv_heads, head_dim)
    dev_gen = torch.Generator(device=device).manual_seed(seed)  # big tensors made in place
    kv_cache = torch.randn(kv_shape, generator=dev_gen, device=device, dtype=dtype)
    num_tokens = sum(q_lens)
    q_shape = (num_tokens, num_kv_heads * group, head_dim)
    q = torch.randn(q_shape, generator=dev_gen, device=device, dtype=dtype)
    starts = [0]
    for n in q_lens:
        starts.append(starts[-1] + n)
    slots = []
    for i, (s, n) in enumerate(zip(seq_lens, q_lens)):
        for pos in range(s - n, s):
            slots.append(int(block_tables[i, pos // block_size]) * block_size + pos % block_size)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        query_start_loc_cpu=starts,
        seq_lens_cpu=list(seq_lens),
    )
    return q, kv_cache, meta
