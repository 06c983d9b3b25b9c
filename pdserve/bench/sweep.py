"""Rate sweep: run the workload at each request rate, find the highest rate meeting the SLO.

A rate "meets the SLO" when at least `attainment` of its requests (failures count as misses)
met every given SLO. The answer is the highest tested rate that meets it; rates are run from low
to high and the sweep stops after two consecutive rates miss (the server is past its knee).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from rich.console import Console

from pdserve.bench.client import ClientConfig, run_load
from pdserve.bench.report import per_request_values, sweep_table
from pdserve.bench.workload import BenchRequest
from pdserve.metrics import summarize

MAX_CONSECUTIVE_MISSES = 2


def best_rate(attainment_by_rate: Mapping[float, float | None], target: float) -> float | None:
    """Highest rate whose SLO attainment is >= target; None when no rate meets it."""
    ok = [rate for rate, att in attainment_by_rate.items() if att is not None and att >= target]
    return max(ok, default=None)


def run_sweep(
    requests_at_rate: Callable[[float], Sequence[BenchRequest]],
    rates: Sequence[float],
    client_config: ClientConfig,
    slos_s: Mapping[str, float],
    attainment: float,
    summarize_kwargs: Mapping | None = None,
    config: dict | None = None,
    label: str = "",
    console: Console | None = None,
) -> dict:
    """Run each rate (ascending) and return a sweep result dict (see pdserve.bench.report)."""
    if not slos_s:
        raise ValueError("a sweep needs at least one --goodput SLO")
    if not 0 < attainment <= 1:
        raise ValueError(f"attainment must be in (0, 1], got {attainment}")
    console = console or Console()
    points, misses = [], 0
    for rate in sorted(rates):
        run = run_load(requests_at_rate(rate), client_config)
        summary = summarize(run.timelines, run.duration_s, slos_s, **(summarize_kwargs or {}))
        points.append(
            {
                "request_rate": rate,
                "summary": summary.to_dict(),
                **per_request_values(run.timelines),
            }
        )
        console.print(
            f"rate {rate:g} req/s: goodput {summary.goodput:.2f} req/s, "
            f"attainment {100 * (summary.slo_attainment or 0):.1f} %"
        )
        misses = 0 if (summary.slo_attainment or 0) >= attainment else misses + 1
        if misses >= MAX_CONSECUTIVE_MISSES:
            break
    found = best_rate(
        {p["request_rate"]: p["summary"]["slo_attainment"] for p in points}, attainment
    )
    console.print(sweep_table(points, found))
    return {
        "kind": "sweep",
        "label": label,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": config or {},
        "slos_ms": {k: v * 1000 for k, v in slos_s.items()},
        "attainment_target": attainment,
        "best_rate": found,
        "points": points,
    }
