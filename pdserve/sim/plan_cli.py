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
    p.add_argument("--jobs", type=int, default=None, help="processes (default: every core)")
    p.add_argument("--min-probe-s", type=float, default=None,
                   help="seconds of arrivals each probe offers at least (default 20)")  # fmt: skip
    p.add_argument("--check-replicas", type=int, default=0, metavar="K",
                   help="simulate K units of the recommendation at K times its rate")  # fmt: skip
    p.add_argument("--json", default=None, help="write the search's results here")


def main(args: argparse.Namespace) -> int:
    import json
    import math
    import time

    from rich.console import Console
    from rich.table import Table

    from pdserve.bench.datasets import build_workload
    from pdserve.sim.plan import (
        MIN_PROBE_S,
        candidates,
        check_replicas,
        replicas_for,
        search,
    )

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
    show = lambda p: console.print(f"  {p.candidate.gpu} {p.candidate.fleet}: {p.rate:.2f} req/s"
                                   f" ({p.num_probes} probes)")  # fmt: skip
    t0 = time.perf_counter()
    points = search(requests, cands, profiles, slos_s, args.attainment, args.routing,
                    args.bisections, progress=show, jobs=args.jobs,
                    min_probe_s=args.min_probe_s or MIN_PROBE_S)  # fmt: skip
    elapsed_s = time.perf_counter() - t0
    console.print(f"searched in {elapsed_s:.0f} s, {sum(p.num_probes for p in points)} simulations")
    table = Table(
        title=f"fleets meeting {args.slo} ms at {args.attainment:.0%}", title_justify="left"
    )
    cols = ("rank", "gpu", "fleet", "$/h", "goodput req/s", "per GPU", "req per $",
            "$ per 1M out tok", "p90 TTFT ms", "p90 TPOT ms")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    for rank, p in enumerate(points[: args.top + 1], 1):
        c, cpm, s = p.candidate, p.cost_per_million_tokens, p.summary
        table.add_row(
            str(rank),
            c.gpu,
            c.fleet,
            f"{c.cost_per_hour:.2f}",
            f"{p.goodput:.2f}",
            f"{p.goodput / c.num_gpus:.2f}",
            f"{p.requests_per_dollar:,.0f}",
            f"{cpm:.3f}" if cpm else "-",
            f"{s.to_dict().get('p90_ttft_ms', math.nan):.0f}" if s else "-",
            f"{s.to_dict().get('p90_tpot_ms', math.nan):.1f}" if s else "-",
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
    check = None
    if args.check_replicas > 1:
        s = check_replicas(requests, best, args.check_replicas, profiles[best.candidate.gpu],
                           slos_s, args.routing)  # fmt: skip
        check = {"units": args.check_replicas, "rate": best.rate * args.check_replicas,
                 "slo_attainment": s.slo_attainment, "completed": s.completed,
                 "num_requests": s.num_requests}  # fmt: skip
        console.print(f"check: {args.check_replicas} units at {check['rate']:.1f} req/s: "
                      f"attainment {s.slo_attainment:.1%} (unit alone: "
                      f"{best.summary.slo_attainment:.1%})")  # fmt: skip
    if args.json:
        out = {"slo_ms": args.slo, "attainment": args.attainment, "gpus": gpu_costs,
               "num_requests_per_probe": len(requests), "workload": args.dataset_name,
               "model_shape": args.model_shape, "routing": args.routing,
               "target_rate": args.target_rate, "search_s": elapsed_s, "check_replicas": check,
               "points": [_point_json(p) for p in points]}  # fmt: skip
        if args.target_rate and best.rate > 0:
            n = replicas_for(best, args.target_rate)
            out["recommended"] = {"fleet": best.candidate.fleet, "gpu": best.candidate.gpu,
                                  "units": n, "num_gpus": n * best.candidate.num_gpus,
                                  "cost_per_hour": n * best.candidate.cost_per_hour}  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        console.print(f"wrote {args.json}")
    if args.plot:
        from pdserve.sim.plan_plot import plot_frontier

        console.print(f"wrote {plot_frontier(points, args.plot)}")
    return 0


def _point_json(p) -> dict:
    c, s = p.candidate, p.summary
    out = {"gpu": c.gpu, "fleet": c.fleet, "num_gpus": c.num_gpus,
           "cost_per_hour": c.cost_per_hour, "rate": p.rate, "goodput": p.goodput,
           "requests_per_dollar": p.requests_per_dollar,
           "cost_per_million_output_tokens": p.cost_per_million_tokens,
           "num_probes": p.num_probes}  # fmt: skip
    if s is not None:
        d = s.to_dict()
        out.update({k: d.get(k) for k in ("slo_attainment", "mean_ttft_ms", "p90_ttft_ms",
                                          "mean_tpot_ms", "p90_tpot_ms")})  # fmt: skip
    return out
