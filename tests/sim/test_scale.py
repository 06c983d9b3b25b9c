"""Scale, scaled down for CI: 20k requests over 64 instances (benchmarks/bench_sim_scale.py runs
the full 1M). The bound is generous; the measured time is printed for the record."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import bench_sim_scale  # noqa: E402


def test_20k_requests_over_64_instances_simulate_quickly(capsys):
    elapsed, result, num_ok, _ = bench_sim_scale.run(20_000, 64, "power_of_two", 4, 64 * 150.0)
    with capsys.disabled():
        print(f"\n20k requests / 64 instances: {elapsed:.1f} s")
    assert num_ok == 20_000
    assert elapsed < 180
