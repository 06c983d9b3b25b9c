"""`pdserve bench serve`: one run (or a rate sweep) against an OpenAI-compatible server."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from rich.console import Console

from pdserve.bench.arrivals import with_arrivals
from pdserve.bench.cli import config_of
from pdserve.bench.client import ClientConfig, run_load
from pdserve.bench.datasets import build_workload
from pdserve.bench.plots import plot_results
from pdserve.bench.report import print_summary, save_result, serve_result
from pdserve.bench.sweep import run_sweep
from pdserve.metrics import summarize


def _check_flags(args: argparse.Namespace) -> None:
    if not args.request_rate > 0:
        raise ValueError(f"--request-rate must be > 0 (inf: all at once), got {args.request_rate}")
    if not args.burstiness > 0:
        raise ValueError(f"--burstiness must be > 0, got {args.burstiness}")
    if not 0 <= args.random_range_ratio < 1:
        raise ValueError(f"--random-range-ratio must be in [0, 1), got {args.random_range_ratio}")
    if not 0 < args.attainment <= 1:
        raise ValueError(f"--attainment must be in (0, 1], got {args.attainment}")
    names = [name for name, _ in args.goodput]
    if len(names) != len(set(names)):
        raise ValueError(f"--goodput names a metric twice: {names}")
    if args.sweep_rates:
        if not args.goodput:
            raise ValueError("--sweep-rates needs --goodput SLOs (e.g. --goodput ttft:500 tpot:50)")
        if args.dataset_name == "trace":
            raise ValueError("--sweep-rates does not apply to a trace; use --trace-time-scale")


def main_serve(args: argparse.Namespace) -> int:
    try:
        _check_flags(args)
        requests = build_workload(args)
    except (ValueError, OSError) as e:
        print(f"pdserve bench serve: error: {e}", file=sys.stderr)
        return 2
    console = Console()
    slos_s = {name: ms / 1000 for name, ms in args.goodput}
    client = ClientConfig(
        base_url=args.base_url,
        model=args.model,
        endpoint=args.endpoint,
        prompt_format=args.prompt_format,
        max_concurrency=args.max_concurrency,
        request_timeout_s=args.request_timeout,
        show_progress=not args.disable_tqdm,
    )
    summarize_kwargs = dict(
        percentiles=args.metric_percentiles,
        metrics=args.percentile_metrics,
        gpu_cost_per_hour=args.gpu_cost_per_hour,
        num_gpus=args.num_gpus,
    )
    if args.sweep_rates:
        result = run_sweep(
            lambda rate: with_arrivals(requests, rate, args.burstiness, args.seed),
            args.sweep_rates, client, slos_s, args.attainment, summarize_kwargs,
            config_of(args), args.label, console,
        )  # fmt: skip
        num_completed = sum(p["summary"]["completed"] for p in result["points"])
    else:
        if args.dataset_name != "trace":
            requests = with_arrivals(requests, args.request_rate, args.burstiness, args.seed)
        run = run_load(requests, client)
        summary = summarize(run.timelines, run.duration_s, slos_s, **summarize_kwargs)
        rate = "inf" if math.isinf(args.request_rate) else f"{args.request_rate:g}"
        print_summary(summary, f"pdserve bench serve: {args.dataset_name} at {rate} req/s", console)
        result = serve_result(summary, run.timelines, config_of(args), args.label)
        num_completed = summary.completed
    json_path = None
    if args.save_result:
        json_path = save_result(result, args.result_dir, args.result_filename)
        console.print(f"wrote {json_path}")
    if args.plot:
        stem = json_path.with_suffix("") if json_path else Path(args.result_dir) / result["kind"]
        if result["kind"] == "sweep":
            png = plot_results([result], f"{stem}-sweep.png")
        else:
            png = plot_results([result], f"{stem}-cdf.png")
        console.print(f"wrote {png}")
    return 0 if num_completed > 0 else 1
