"""`pdserve bench serve | offline | plot`. Flags follow `vllm bench serve` where one exists."""

from __future__ import annotations

import argparse
import math
import sys

from pdserve.metrics import LATENCY_METRICS, SLO_METRICS

DATASETS = ("random", "sharegpt-like", "shared-prefix", "multi-turn", "trace", "w1", "w1-nano")


def _goodput_item(text: str) -> tuple[str, float]:
    name, sep, value = text.partition(":")
    if not sep or name not in SLO_METRICS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected METRIC:MS with METRIC one of {', '.join(SLO_METRICS)} (ttft:500)"
        )
    try:
        ms = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number of ms") from None
    if not ms > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the SLO must be > 0 ms")
    return name, ms


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers > 0")
    return values


def _percentiles(text: str) -> list[float]:
    values = _float_list(text)
    if any(v > 100 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: percentiles must be in (0, 100]")
    return values


def _metric_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in LATENCY_METRICS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"{bad or text!r}: expected from {','.join(LATENCY_METRICS)}"
        )
    return names


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return int(text)


def _add_workload_args(p: argparse.ArgumentParser, default_dataset: str) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--dataset-name", choices=DATASETS, default=default_dataset)
    g.add_argument("--dataset-path", help="JSONL trace for --dataset-name trace")
    g.add_argument(
        "--num-prompts",
        type=_positive_int,
        default=None,
        help="default: 256 (w1), 200, all (trace)",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--vocab-size", type=_positive_int, default=32000, help="prompt ids < this")
    g.add_argument("--random-input-len", type=_positive_int, default=1024)
    g.add_argument("--random-output-len", type=_positive_int, default=128)
    g.add_argument("--random-range-ratio", type=float, default=0.0)
    g.add_argument("--prefix-num-groups", type=_positive_int, default=8)
    g.add_argument("--prefix-system-len", type=_positive_int, default=1024)
    g.add_argument("--prefix-question-len", type=_positive_int, default=128)
    g.add_argument("--multi-turn-num-turns", type=_positive_int, default=4)
    g.add_argument("--multi-turn-user-len", type=_positive_int, default=128)
    g.add_argument("--trace-timestamp-unit", type=float, default=0.001, help="seconds per unit")
    g.add_argument("--trace-time-scale", type=float, default=1.0, help="speed-up of the trace")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="{serve,offline,plot}")
    parser.set_defaults(_parser=parser)

    s = sub.add_parser("serve", help="drive an OpenAI-compatible server, report goodput")
    s.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000")
    s.add_argument("--model", required=True, help="model name sent in each request")
    s.add_argument("--endpoint", default="/v1/completions", help="or /v1/chat/completions")
    s.add_argument("--prompt-format", choices=("auto", "tokens", "text"), default="auto")
    _add_workload_args(s, "random")
    g = s.add_argument_group("load and SLOs")
    g.add_argument("--request-rate", type=float, default=math.inf, help="req/s; inf: all at once")
    g.add_argument("--burstiness", type=float, default=1.0, help="gamma shape; 1 is Poisson")
    g.add_argument("--max-concurrency", type=_positive_int, default=None)
    g.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request")
    g.add_argument("--percentile-metrics", type=_metric_list, default=list(LATENCY_METRICS))
    g.add_argument("--metric-percentiles", type=_percentiles, default=[50.0, 90.0, 99.0])
    g.add_argument("--goodput", type=_goodput_item, nargs="+", default=[], metavar="METRIC:MS")
    g.add_argument("--gpu-cost-per-hour", type=float, default=0.0, help="$ per GPU-hour")
    g.add_argument("--num-gpus", type=_positive_int, default=1)
    g.add_argument("--sweep-rates", type=_float_list, default=None, help="R1,R2,... req/s")
    g.add_argument("--attainment", type=float, default=0.9, help="SLO attainment for the sweep")
    o = s.add_argument_group("output")
    o.add_argument("--save-result", action="store_true")
    o.add_argument("--result-dir", default=".")
    o.add_argument("--result-filename", default=None)
    o.add_argument("--label", default="", help="name of this run in tables, files and plots")
    o.add_argument("--plot", action="store_true", help="write PNG plots next to the result")
    o.add_argument("--disable-tqdm", action="store_true")

    f = sub.add_parser("offline", help="in-process throughput of a workload (W1 by default)")
    f.add_argument("--backend", choices=("pdserve", "hf"), default="pdserve")
    f.add_argument("--model", default="", help="path, or dummy:<shape> (hf); '' = embedded")
    f.add_argument("--hf-attn", default=None, help="hf attn_implementation (paged|sdpa on GPU)")
    f.add_argument("--device", default="auto")
    f.add_argument("--copy-bandwidth-gbps", type=float, default=None, help="for the floor ratio")
    f.add_argument("--matmul-tflops", type=float, default=None, help="for the floor ratio")
    f.add_argument("--measure-card", action="store_true", help="measure both on this GPU")
    f.add_argument("--floor-shape", default=None, help="model shape name for the floor")
    f.add_argument("--save-result", action="store_true")
    f.add_argument("--result-dir", default=".")
    _add_workload_args(f, "w1")

    p = sub.add_parser("plot", help="overlay result JSON files in one PNG")
    p.add_argument("results", nargs="+", help="result JSON files (all serve or all sweep)")
    p.add_argument("-o", "--output", default="bench.png")


def main(args: argparse.Namespace) -> int:
    command = getattr(args, "bench_command", None)
    if command is None:
        args._parser.print_help()
        return 2
    if command == "plot":
        from pdserve.bench.plots import plot_results
        from pdserve.bench.report import load_result

        try:
            path = plot_results([load_result(p) for p in args.results], args.output)
        except (ValueError, OSError, KeyError) as e:
            print(f"pdserve bench plot: error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {path}")
        return 0
    if command == "offline":
        from pdserve.bench.offline_cli import main_offline

        return main_offline(args)
    from pdserve.bench.serve_cli import main_serve

    return main_serve(args)


def config_of(args: argparse.Namespace) -> dict:
    """The flags of a run as JSON-able values, saved with its result."""
    out = {}
    for k, v in vars(args).items():
        if k.startswith("_"):
            continue
        out[k] = v if isinstance(v, int | float | str | bool | list | type(None)) else str(v)
    return out
