"""Kernel tests: on a machine without CUDA the Triton kernels run in Triton's interpreter.

TRITON_INTERPRET must be set before `triton.jit` decorates the kernels (it picks the
interpreter at decoration time), so it is set here, before any test module imports them.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def poison_empty(monkeypatch):
    """Every float tensor from torch.empty starts as NaN: an element a kernel forgets to write
    (or a partial result it forgets to store) shows up as NaN in the output."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", empty)
