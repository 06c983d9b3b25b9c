"""The mypyc build of the simulator's hot modules (benchmarks/build_sim_fast.py) behaves exactly
as the pure Python source: the digests of `sim_digests.py`'s scenarios (simulator runs through
every path: lazy and eager loops, PD, failures, prefix routing, preemption, trace; the scheduler
driven directly through PD states, priorities, aborts, async steps) are equal in both builds.

The build takes about a minute on a 2-core box; it is reused while the package is unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import build_sim_fast  # noqa: E402
import sim_digests  # noqa: E402


@pytest.fixture(scope="module")
def compiled() -> dict:
    return sim_digests.run_compiled()


def test_the_build_compiles_every_listed_module():
    dest = build_sim_fast.build()
    assert build_sim_fast.is_current(dest)
    for module in build_sim_fast.MODULES:
        stem = (dest / module).with_suffix("")
        assert list(stem.parent.glob(f"{stem.name}.*.so")), f"{module} not compiled"


def test_compiled_scenarios_give_the_digests_of_the_pure_source(compiled):
    assert compiled["build"] == "mypyc"
    pure = {name: scenario() for name, scenario in sim_digests.sim_scenarios().items()}
    pure |= {name: scenario() for name, scenario in sim_digests.sched_scenarios().items()}
    pure |= {name: scenario() for name, scenario in sim_digests.hash_scenarios().items()}
    assert {k: v for k, v in compiled.items() if k not in ("build", "native_hashing")} == pure
    assert len(pure) == 21


def test_the_compiled_build_hashes_blocks_natively_and_pure_python_with_hashlib(compiled):
    # The digests above then prove blake2b64 gives hashlib's block hashes ("block-hashes").
    assert compiled["native_hashing"] is True
    assert sim_digests.hashing._NATIVE is False
