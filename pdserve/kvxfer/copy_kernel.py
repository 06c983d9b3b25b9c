"""One kernel launch copies every byte range of a transfer: the descriptor table (source and
destination offsets, lengths) goes to the device as one small tensor and each program copies one
chunk of one range, so the host's cost no longer grows with the number of ranges (a KV layout
scattered over many blocks makes thousands per request). Used by the CUDA IPC transport, whose
peer cache is mapped on the local device: the stores go over NVLink.

Imported only where Triton runs: on a GPU, or on CPU tensors under TRITON_INTERPRET=1 (tests).
Ranges are copied as 8-byte words: `words_of` says whether a transfer allows that.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

CHUNK_WORDS = 2048  # 16 KiB per program


@triton.jit
def _copy_ranges_kernel(src_ptr, dst_ptr, table_ptr, num_ranges, CHUNK: tl.constexpr):
    r = tl.program_id(0)
    chunk = tl.program_id(1)
    src_off = tl.load(table_ptr + r)
    dst_off = tl.load(table_ptr + num_ranges + r)
    num_words = tl.load(table_ptr + 2 * num_ranges + r)
    start = chunk * CHUNK
    if start < num_words:
        idx = start + tl.arange(0, CHUNK)
        mask = idx < num_words
        words = tl.load(src_ptr + src_off + idx, mask=mask)
        tl.store(dst_ptr + dst_off + idx, words, mask=mask)


def words_of(flat: torch.Tensor) -> torch.Tensor | None:
    """`flat` (uint8) as int64 words, or None when its start is not 8-byte aligned."""
    if flat.data_ptr() % 8 or flat.numel() % 8:
        return None
    return flat.view(torch.int64)


def copy_ranges(
    src: torch.Tensor,
    dst: torch.Tensor,
    src_offsets: np.ndarray,
    dst_offsets: np.ndarray,
    nbytes: np.ndarray,
) -> bool:
    """Copy byte ranges from `src` to `dst` (uint8 1-D tensors on one device) on the current
    stream; False (nothing queued) when a range is not made of whole 8-byte words."""
    if not len(nbytes):
        return True
    s, d = words_of(src), words_of(dst)
    if s is None or d is None:
        return False
    table = np.concatenate((src_offsets, dst_offsets, nbytes)).astype(np.int64)
    if (table % 8).any():
        return False
    table //= 8
    max_words = int(table[2 * len(nbytes) :].max())
    # Allocated on the current stream: the caching allocator reuses it only after that stream
    # has run this kernel, so the table lives as long as the copy needs it.
    table_dev = torch.from_numpy(table).to(src.device, non_blocking=src.is_cuda)
    grid = (len(nbytes), triton.cdiv(max_words, CHUNK_WORDS))
    _copy_ranges_kernel[grid](s, d, table_dev, len(nbytes), CHUNK=CHUNK_WORDS)
    return True
