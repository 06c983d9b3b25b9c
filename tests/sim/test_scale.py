"""Scale, scaled down for CI: 100k requests over 64 instances (benchmarks/bench_sim_scale.py runs
the full 1M; its docstring says what the workload is), in the pure source and in the mypyc build
of its hot modules (benchmarks/build_sim_fast.py), which must give the same digest. The bounds
are generous for a 2-core CI box; the measured wall and CPU times are printed for the record."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import bench_sim_scale  # noqa: E402
import sim_digests  # noqa: E402

NUM_REQUESTS = 100_000
BOUND_S = 120.0  # CPU s; measured ~20 s pure, ~7.5 s compiled on the shared 2-core box (2026-11-28)


@pytest.fixture(scope="module")
def pure_run():
    return bench_sim_scale.run_timed(NUM_REQUESTS, 64, "power_of_two", 4, 64 * 150.0)


def test_100k_requests_over_64_instances_simulate_quickly(pure_run, capsys):
    elapsed, cpu, result, num_ok, _ = pure_run
    with capsys.disabled():
        print(f"\n100k requests / 64 instances: {elapsed:.1f} s wall, {cpu:.1f} s CPU "
              f"({1e6 * cpu / NUM_REQUESTS:.0f} us CPU per request)")  # fmt: skip
    assert num_ok == NUM_REQUESTS
    assert all(len(tl.token_times_s) == tl.num_output_tokens for tl in result.timelines)
    assert cpu < BOUND_S


def test_100k_requests_compiled_give_the_pure_digest(pure_run, capsys):
    _, pure_cpu, result, _, num_tokens = pure_run
    compiled = sim_digests.run_compiled("--scale", str(NUM_REQUESTS))
    scale = compiled["scale"]
    with capsys.disabled():
        print(f"\n100k requests / 64 instances, mypyc build: {scale['wall_s']:.1f} s wall, "
              f"{scale['cpu_s']:.1f} s CPU ({pure_cpu / scale['cpu_s']:.2f}x the pure run's "
              "CPU time)")  # fmt: skip
    assert compiled["build"] == "mypyc"
    assert scale["completed"] == NUM_REQUESTS and scale["output_tokens"] == num_tokens
    assert scale["digest"] == sim_digests.run_digest(result)
    assert scale["cpu_s"] < BOUND_S
