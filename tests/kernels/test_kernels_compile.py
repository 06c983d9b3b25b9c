"""The GPU compiler's view of the kernels, in CI without a GPU (see sm90_compile.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton", reason="triton is not installed (optional GPU dependency)")
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
SCRIPT = os.path.join(os.path.dirname(__file__), "sm90_compile.py")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(PTXAS), reason="triton's NVIDIA backend (ptxas) is absent")
def test_kernels_compile_for_sm90_without_spills_and_with_ordered_combine():
    # A fresh process without TRITON_INTERPRET: conftest.py turned the interpreter on here.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("sm_90 compile: ok")
