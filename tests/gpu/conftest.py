"""GPU engine tests: run on the device machine with `python -m pytest -m gpu tests/gpu -q`.

Without CUDA (or Triton) the test modules are not even collected: they build GPU engines at
import of their fixtures and compare against HF transformers on the device.
"""

import importlib.util

import torch

if not torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
    collect_ignore_glob = ["test_*.py"]
