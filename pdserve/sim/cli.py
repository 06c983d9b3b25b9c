"""`pdserve sim`: a bench workload against a described fleet, with the benchmark's report.

    pdserve sim --workload sharegpt-like --num-prompts 2000 --request-rate 20 \
        --fleet prefill:2,decode:6 --gpu h100 --routing ttft --goodput ttft:500 tpot:50
"""

from __future__ import annotations

import argparse
import math
import sys

from pdserve.bench.cli import _add_workload_args, _goodput_item, config_of
from pdserve.cluster.pd_policy import MODES
from pdserve.cluster.policies import DEFAULT_POLICY, POLICIES, PolicyConfig
from pdserve.sim.cluster import SimConfig
from pdserve.sim.profiles import CARDS, DEFAULT_MODEL, load_profile, profile_for


def add_sim_arguments(p: argparse.ArgumentParser) -> None:
    """Workload, hardware and SLO flags shared by `pdserve sim` and `pdserve plan`."""
    _add_workload_args(p, "sharegpt-like")
    p.add_argument("--workload", dest="dataset_name", default=argparse.SUPPRESS,
                   help="alias of --dataset-name")  # fmt: skip
    g = p.add_argument_group("hardware")
    g.add_argument("--model-shape", default=DEFAULT_MODEL, help="llama-3.1-8b | qwen3-0.6b")
    g.add_argument("--profile", default=None, help="profile name or JSON path (overrides --gpu)")
    g.add_argument("--routing", choices=sorted(POLICIES), default=DEFAULT_POLICY)
    g.add_argument("--request-rate", type=float, default=math.inf, help="req/s; inf: all at once")
    g.add_argument("--burstiness", type=float, default=1.0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_sim_arguments(p)
    p.add_argument(
        "--fleet", default="fused:4", help="ROLE:COUNT[:GPU],... e.g. prefill:2,decode:6"
    )
    p.add_argument("--gpu", default="h100", help=f"default GPU of the fleet: {', '.join(CARDS)}")
    p.add_argument("--gpu-cost-per-hour", type=float, default=None, help="$ (default: list price)")
    p.add_argument("--goodput", type=_goodput_item, nargs="+", default=[], metavar="METRIC:MS")
    p.add_argument("--slo-ttft-ms", type=float, default=None, help="SLO admission (refuse early)")
    p.add_argument("--pd-disaggregation", choices=MODES, default="cost",
                   help="PD fleets: as `pdserve up --pd-disaggregation`")  # fmt: skip
    p.add_argument("--fail", action="append", default=[], metavar="TIME_S:INSTANCE:DOWN_S",
                   help="fail an instance (e.g. 10:fused-1:30)")  # fmt: skip
    p.add_argument("--trace-out", default=None, help="write a Chrome-trace JSON timeline here")
    p.add_argument("--save-result", action="store_true")
    p.add_argument("--result-dir", default=".")
    p.add_argument("--label", default="sim")
    p.add_argument("--plot", action="store_true", help="TTFT/ITL CDF PNG next to the result")


def resolve_profiles(args, gpus) -> dict:
    """gpu name -> Profile; '' is the default (--profile, else --gpu with --model-shape)."""
    default = load_profile(args.profile) if args.profile else profile_for(gpus[0], args.model_shape)
    out = {"": default}
    for gpu in gpus:
        out[gpu] = default if args.profile else profile_for(gpu, args.model_shape)
    return out


def _failures(specs: list[str]) -> tuple:
    out = []
    for spec in specs:
        t, instance_id, down = spec.split(":")
        out.append((float(t), instance_id, float(down)))
    return tuple(out)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pdserve.bench.arrivals import with_arrivals
    from pdserve.bench.datasets import build_workload
    from pdserve.bench.report import print_summary, save_result, serve_result
    from pdserve.sim.fleet import parse_fleet
    from pdserve.sim.run import simulate
    from pdserve.sim.trace import write_trace

    try:
        groups = parse_fleet(args.fleet)
        gpus = [args.gpu] + [g.gpu for g in groups if g.gpu and g.gpu != args.gpu]
        profiles = resolve_profiles(args, gpus)
        requests = build_workload(args)
        if args.dataset_name != "trace":
            requests = with_arrivals(requests, args.request_rate, args.burstiness, args.seed)
        config = SimConfig(
            routing=args.routing,
            pd_disaggregation=args.pd_disaggregation,
            policy=PolicyConfig(seed=args.seed),
            slo_ttft_s=args.slo_ttft_ms / 1000 if args.slo_ttft_ms else None,
            failures=_failures(args.fail),
            trace=args.trace_out is not None,
        )
    except (ValueError, OSError) as e:
        print(f"pdserve sim: error: {e}", file=sys.stderr)
        return 2
    costs = {g: CARDS[g].cost_per_hour if g in CARDS else 0.0 for g in gpus}
    if args.gpu_cost_per_hour is not None:
        costs[args.gpu] = args.gpu_cost_per_hour
    costs[""] = costs[args.gpu]
    slos_s = {name: ms / 1000 for name, ms in args.goodput}
    run = simulate(requests, args.fleet, profiles, costs, config, slos_s=slos_s or None)
    console = Console()
    kinds = ", ".join(sorted({f"{p.name} ({p.kind})" for p in profiles.values()}))
    print_summary(run.summary, f"pdserve sim: {args.fleet}, {args.routing}, {kinds}", console)
    for inst in run.result.instances:
        stats = inst.scheduler.stats
        hit = stats.prefix_hits / stats.prefix_queries if stats.prefix_queries else 0.0
        console.print(f"  {inst.instance_id:>12}: {inst.num_steps} steps, busy "
                      f"{100 * inst.busy_s / run.result.duration_s:.0f} %, prefix hit "
                      f"{100 * hit:.0f} %, preemptions {stats.num_preemptions}")  # fmt: skip
    if args.trace_out:
        console.print(f"wrote {write_trace(run.result.trace, args.trace_out)}")
    if args.save_result or args.plot:
        result = serve_result(run.summary, run.result.timelines, config_of(args), args.label)
        path = save_result(result, args.result_dir)
        console.print(f"wrote {path}")
        if args.plot:
            from pdserve.bench.plots import plot_cdfs

            console.print(f"wrote {plot_cdfs([result], path.with_suffix('.png'))}")
    return 0
