"""The descriptor-table copy kernel of the CUDA IPC transport, on CPU tensors in Triton's
interpreter (CI) and on the GPU (marked gpu), against a plain byte copy."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (optional GPU dependency)")

from pdserve.kvxfer.copy_kernel import CHUNK_WORDS, copy_ranges  # noqa: E402

DEVICES = [pytest.param("cuda", marks=pytest.mark.gpu)] if torch.cuda.is_available() else []
if os.environ.get("TRITON_INTERPRET") == "1":
    DEVICES.append("cpu")


def _ranges(rng: np.random.Generator, total: int, sizes: list[int]):
    """Non-overlapping destination ranges of `sizes` bytes in a buffer of `total`, shuffled
    sources elsewhere (both 8-byte aligned)."""
    src_off, dst_off, at = [], [], 0
    for n in sizes:
        dst_off.append(at)
        at += n + 8 * int(rng.integers(0, 4))
    assert at <= total
    order = rng.permutation(len(sizes))
    at = 0
    src_at = [0] * len(sizes)
    for i in order:
        src_at[i] = at
        at += sizes[i]
    src_off = src_at
    return (np.array(src_off, np.int64), np.array(dst_off, np.int64), np.array(sizes, np.int64))


def _case(device: str):
    rng = np.random.default_rng(3)
    # short ranges, one of exactly one program's chunk, and one that spans three programs
    sizes = [8, 64, 8 * CHUNK_WORDS, 8 * (2 * CHUNK_WORDS + 5), 1024, 4096]
    total = 2 * sum(sizes) + 1024
    src = torch.from_numpy(rng.integers(0, 256, total, dtype=np.uint8)).to(device)
    dst = torch.full((total,), 0xAB, dtype=torch.uint8, device=device)
    return src, dst, *_ranges(rng, total, sizes)


def _expected(src, dst, src_off, dst_off, nbytes):
    want = dst.cpu().numpy().copy()
    s = src.cpu().numpy()
    for a, b, n in zip(src_off, dst_off, nbytes):
        want[b : b + n] = s[a : a + n]
    return want


@pytest.mark.parametrize("device", DEVICES)
def test_every_range_lands_and_nothing_else_changes(device):
    src, dst, src_off, dst_off, nbytes = _case(device)
    want = _expected(src, dst, src_off, dst_off, nbytes)
    assert copy_ranges(src, dst, src_off, dst_off, nbytes)
    if device == "cuda":
        torch.cuda.synchronize()
    assert np.array_equal(dst.cpu().numpy(), want)


@pytest.mark.parametrize("device", DEVICES)
def test_ranges_not_made_of_whole_words_are_refused_untouched(device):
    src, dst, src_off, dst_off, nbytes = _case(device)
    before = dst.clone()
    odd = nbytes.copy()
    odd[1] += 3  # a length that is not a multiple of 8
    assert not copy_ranges(src, dst, src_off, dst_off, odd)
    shifted = src_off.copy()
    shifted[0] += 4  # an unaligned source offset
    assert not copy_ranges(src, dst, shifted, dst_off, nbytes)
    assert not copy_ranges(src[1:], dst, src_off, dst_off, nbytes)  # unaligned base
    assert torch.equal(dst, before)


def test_no_ranges_is_a_no_op():
    empty = np.zeros(0, np.int64)
    t = torch.zeros(16, dtype=torch.uint8)
    assert copy_ranges(t, t.clone(), empty, empty, empty)
