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
    # torch caches its factory functions the first time a `with torch.device(...)` block runs;
    # fill that cache with the real torch.empty first, or it would hold this patch and, once the
    # patch is undone, every later `with torch.device("meta")` would allocate on the CPU.
    from torch.utils._device import _device_constructors

    _device_constructors()
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", empty)
