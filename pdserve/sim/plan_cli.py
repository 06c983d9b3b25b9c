"""`pdserve plan`: the cheapest fleet meeting an SLO for a workload, with runner-ups and a plot.

    pdserve plan --workload sharegpt-like --slo ttft:500,tpot:50 --attainment 0.9 \
        --gpu h100:2.5 --gpu h200:3.5 --num-gpus 2,4 --target-rate 5000
"""

from __future__ import annotations

import argparse
import sys

from pdserve.bench.cli import _goodput_item
from pdserve.sim.cli import add_sim_arguments, resolve_profiles


def _slos(text: str) -> dict[str, float]:
    return dict(_goodput_item(item) for item in text.split(",") if item)


def _gpu_cost(text: str) -> tuple[str, float]:
    name, _, cost = text.partition(":")
    try:
        return name, float(cost)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected TYPE:COST_PER_HOUR") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_sim_arguments(p)
    p.set_defaults(num_prompts=400)
    p.add_argument("--slo", type=_slos, required=True, help="e.g. ttft:500,tpot:50 (ms)")
    p.add_argument("--attainment", type=float, default=0.9)
    p.add_argument(
        "--gpu",
        type=_gpu_cost,
        action="append",
        default=None,
        metavar="TYPE:COST_PER_HOUR",
        help="repeat per GPU type (default h100:2.5)",
    )
    p.add_argument("--num-gpus", default="4", help="GPUs per fleet unit, e.g. 2,4,8")
    p.add_argument("--no-disaggregated", action="store_true", help="fused fleets only")
    p.add_argument("--target-rate", type=float, default=None, help="req/s the service must carry")
    p.add_argument("--bisections", type=int, default=5)
    p.add_argument("--top", type=int, default=5, help="runner-ups to print")
    p.add_argument("--plot", default="plan-frontier.png", help="frontier PNG ('' for none)")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pdserve.bench.datasets import build_workload
    from pdserve.sim.plan import candidates, replicas_for, search

    gpu_costs = dict(args.gpu or [("h100", 2.5)])
    try:
        counts = [int(n) for n in args.num_gpus.split(",")]
        profiles = resolve_profiles(args, list(gpu_costs))
        requests = build_workload(args)
    except (ValueError, OSError) as e:
        print(f"pdserve plan: error: {e}", file=sys.stderr)
        return 2
    console = Console()
    slos_s = {k: v / 1000 for k, v in args.slo.items()}
    cands = candidates(gpu_costs, counts, not args.no_disaggregated)
    console.print(f"searching {len(cands)} fleets x rates, {len(requests)} requests per probe")
    show = lambda p: console.print(f"  {p.candidate.gpu} {p.candidate.fleet}: {p.rate:.2f} req/s")
    points = search(requests, cands, profiles, slos_s, args.attainment, args.routing,
                    args.bisections, progress=show)  # fmt: skip
    table = Table(
        title=f"fleets meeting {args.slo} ms at {args.attainment:.0%}", title_justify="left"
    )
    for col in ("rank", "gpu", "fleet", "$/h", "goodput req/s", "req per $", "$ per 1M out tok"):
        table.add_column(col, justify="right")
    for rank, p in enumerate(points[: args.top + 1], 1):
        c, cpm = p.candidate, p.cost_per_million_tokens
        table.add_row(
            str(rank),
            c.gpu,
            c.fleet,
            f"{c.cost_per_hour:.2f}",
            f"{p.goodput:.2f}",
            f"{p.requests_per_dollar:,.0f}",
            f"{cpm:.3f}" if cpm else "-",
        )
    console.print(table)
    best = points[0]
    if best.rate <= 0:
        console.print("no candidate meets the SLO at any rate tried")
        return 1
    line = f"recommended: {best.candidate.gpu} {best.candidate.fleet} ({best.goodput:.2f} req/s)"
    if args.target_rate:
        n = replicas_for(best, args.target_rate)
        line += (
            f"; {n} units = {n * best.candidate.num_gpus} GPUs, "
            f"${n * best.candidate.cost_per_hour:,.0f}/h for {args.target_rate:g} req/s"
        )
    console.print(line)
    if args.plot:
        from pdserve.sim.plan_plot import plot_frontier

        console.print(f"wrote {plot_frontier(points, args.plot)}")
    return 0
