"""Reports of a benchmark run: a terminal table and a JSON result file.

Result files (`--save-result`) are JSON objects:
    {"kind": "serve", "label", "date", "config": {flags}, "summary": BenchSummary.to_dict(),
     "ttfts_s": [...], "tpots_s": [...], "itls_s": [...], "e2els_s": [...]}   per-request values
    {"kind": "sweep", "label", "date", "config", "slos_ms", "attainment_target", "best_rate",
     "points": [{"request_rate", "summary", ...per-request values...}, ...]}
`pdserve bench plot` overlays any number of them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pdserve.metrics import BenchSummary, RequestTimeline, latency_values


def per_request_values(timelines: Sequence[RequestTimeline]) -> dict[str, list[float]]:
    """The raw latency samples (seconds) the CDF plots need."""
    return {f"{m}s_s": latency_values(timelines, m) for m in ("ttft", "tpot", "itl", "e2el")}


def serve_result(
    summary: BenchSummary, timelines: Sequence[RequestTimeline], config: dict, label: str = ""
) -> dict:
    return {
        "kind": "serve",
        "label": label,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": config,
        "summary": summary.to_dict(),
        **per_request_values(timelines),
    }


def _json_safe(obj):
    # JSON has no inf/nan: write them as null so every JSON reader accepts the file.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def save_result(result: dict, result_dir: str | Path = ".", filename: str | None = None) -> Path:
    """Write the result as JSON under result_dir; the default name carries kind, label and date."""
    directory = Path(result_dir)
    directory.mkdir(parents=True, exist_ok=True)
    if filename is None:
        label = result.get("label") or "pdserve"
        filename = f"{result['kind']}-{label}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path = directory / filename
    path.write_text(json.dumps(_json_safe(result), indent=2))
    return path


def load_result(path: str | Path) -> dict:
    result = json.loads(Path(path).read_text())
    if not isinstance(result, dict) or result.get("kind") not in ("serve", "sweep"):
        raise ValueError(f"{path}: not a pdserve bench result (no kind 'serve' or 'sweep')")
    return result


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def summary_table(summary: BenchSummary, title: str = "pdserve bench serve") -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("requests completed / failed", f"{summary.completed} / {summary.failed}"),
        ("duration (s)", _fmt(summary.duration_s)),
        ("input / output tokens", f"{summary.total_input_tokens} / {summary.total_output_tokens}"),
        ("request throughput (req/s)", _fmt(summary.request_throughput)),
        ("output throughput (tok/s)", _fmt(summary.output_throughput)),
        ("total throughput (tok/s)", _fmt(summary.total_token_throughput)),
    ]
    if summary.goodput is not None:
        slos = ", ".join(f"{k}<={v:g}ms" for k, v in summary.slos_ms)
        rows.append((f"goodput (req/s, {slos})", _fmt(summary.goodput)))
        rows.append(("SLO attainment", f"{_fmt(100 * (summary.slo_attainment or 0), 1)} %"))
    if summary.cost_per_million_output_tokens is not None:
        rows.append(
            ("cost per 1M output tokens ($)", _fmt(summary.cost_per_million_output_tokens, 3))
        )
    for name, st in summary.metrics:
        rows.append(
            (f"{name.upper()} mean / median (ms)", f"{_fmt(st.mean_ms)} / {_fmt(st.median_ms)}")
        )
        for p, value in st.percentiles_ms:
            rows.append((f"{name.upper()} p{p:g} (ms)", _fmt(value)))
    for error, count in summary.errors:
        rows.append((f"error x{count}", error[:80]))
    for key, value in rows:
        table.add_row(key, value)
    return table


def print_summary(summary: BenchSummary, title: str = "pdserve bench serve", console=None) -> None:
    (console or Console()).print(summary_table(summary, title))


def sweep_table(points: Sequence[dict], best_rate: float | None) -> Table:
    table = Table(
        title=f"rate sweep: best rate meeting the SLO = {best_rate}", title_justify="left"
    )
    for col in ("rate (req/s)", "goodput", "attainment", "req/s", "out tok/s", "p99 TTFT ms"):
        table.add_column(col, justify="right")
    for pt in points:
        s = pt["summary"]
        table.add_row(
            _fmt(pt["request_rate"]),
            _fmt(s.get("goodput")),
            _fmt(100 * (s.get("slo_attainment") or 0), 1) + " %",
            _fmt(s["request_throughput"]),
            _fmt(s["output_throughput"], 1),
            _fmt(s.get("p99_ttft_ms")),
        )
    return table
