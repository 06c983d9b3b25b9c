"""Import rules: the rooms the simulator runs (and the torch-free vocabulary) import with torch,
and where stated asyncio, made unimportable. Each module is imported in a fresh interpreter whose
meta path refuses the forbidden packages, so an indirect import fails too."""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCKER = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"layering: {{name}} imported")
        return None
sys.meta_path.insert(0, Blocker())
import {module}
"""

NO_TORCH_NO_ASYNCIO = ["pdserve.sched", "pdserve.sched.scheduler", "pdserve.sim",
                       "pdserve.sim.cluster", "pdserve.sim.cli", "pdserve.sim.plan",
                       "pdserve.cluster.policies", "pdserve.cluster.prefix_index",
                       "pdserve.cluster.cost_model", "pdserve.cluster.pd_policy"]  # fmt: skip
NO_TORCH = ["pdserve.metrics", "pdserve.bench.workload", "pdserve.types", "pdserve.hashing"]


def _import_blocked(module: str, blocked: set[str]) -> subprocess.CompletedProcess:
    code = BLOCKER.format(blocked=sorted(blocked), module=module)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize("module", NO_TORCH_NO_ASYNCIO)
def test_imports_without_torch_or_asyncio(module):
    proc = _import_blocked(module, {"torch", "asyncio", "numpy"})
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("module", NO_TORCH)
def test_imports_without_torch(module):
    proc = _import_blocked(module, {"torch"})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_blocker_catches_a_forbidden_import():
    proc = _import_blocked("json", {"json"})
    assert proc.returncode != 0 and "layering: json imported" in proc.stderr
