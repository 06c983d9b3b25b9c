"""Test-wide settings: one intra-op thread.

Tiny test models spend their time in many small ops; with two OpenMP threads on a loaded 2-core
machine each op waits on the other thread (measured: 20x slower). One thread is faster here and
makes timings steadier; the speed benchmarks set their own thread counts.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
except ImportError:  # the torch-free layering tests run without it
    pass
