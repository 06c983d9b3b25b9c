"""Simulator fidelity on multi-GPU fleets: re-simulate the goodput sweeps of a
`bench_pd_gpu.py` record (fused and PD fleets on the GPUs of one host) and print real vs
simulated attainment, TTFT p90 and TPOT p90 per rate, and the goodput of each.

    python benchmarks/bench_sim_pd_fidelity.py \\
        docs/results/h100_2026-11-27_s5/x4_ratio_a/a/bench_pd_gpu_fused4_pd3p1d.json \\
        --profile docs/results/sim_fidelity/h100-profile-llama-3.1-8b-x1-2e8be57.json

The record keeps each sweep's summary, not its requests; the requests are rebuilt as the
benchmark drew them (`random_workload` of the mix, seed 1; arrivals `with_arrivals(rate,
seed=k)`, k the rate's index in the record's `--rates`; the fresh prompt ids do not matter to a
simulation without shared prefixes). The fleet is the part's (`FLEETS` below, as in
bench_pd_gpu.py), PD with `--pd-disaggregation always`, routing `ttft`. Writes JSON next to
the record unless --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pdserve.bench.arrivals import with_arrivals
from pdserve.bench.workload import random_workload
from pdserve.cluster.policies import PolicyConfig
from pdserve.sim.cluster import SimConfig
from pdserve.sim.profiles import load_profile, profile_for
from pdserve.sim.run import simulate

FLEETS = {  # bench_pd_gpu.py's parts -> simulator fleets
    "pd": "prefill:1,decode:1",
    "pd3p1d": "prefill:3,decode:1",
    "fused2": "fused:2",
    "fused4": "fused:4",
}


def resimulate(record: dict, part: str, profile) -> list[dict]:
    args = record["args"]
    sweep = record["parts"][part]["goodput"]
    slos_s = {k: v / 1e3 for k, v in sweep["slos_ms"].items()}
    base = random_workload(args["mix_requests"], args["mix_input_len"], args["mix_output_len"],
                           0.5, args["vocab_size"], seed=1)  # fmt: skip
    budget = args["max_num_batched_tokens"]
    config = SimConfig(routing="ttft", pd_disaggregation="always",
                       policy=PolicyConfig(max_batched_tokens=budget))  # fmt: skip
    rows = []
    for point in sweep["points"]:
        k = args["rates"].index(point["rate"])
        requests = with_arrivals(base, point["rate"], seed=k)
        sim = simulate(requests, FLEETS[part], {"": profile}, {"": 0.0}, config,
                       slos_s=slos_s).summary.to_dict()  # fmt: skip
        rows.append({"rate": point["rate"], "real": _pick(point), "sim": _pick(sim)})
    return rows


def _pick(s: dict) -> dict:
    return {"attainment": s["slo_attainment"], "p90_ttft_ms": s["p90_ttft_ms"],
            "p90_tpot_ms": s["p90_tpot_ms"], "mean_ttft_ms": s["mean_ttft_ms"],
            "mean_tpot_ms": s["mean_tpot_ms"]}  # fmt: skip


def goodput(rows: list[dict], side: str, attainment: float) -> float:
    return max((r["rate"] for r in rows if r[side]["attainment"] >= attainment), default=0.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("records", nargs="+", help="bench_pd_gpu JSON files")
    p.add_argument("--profile", default=None, help="profile name or JSON (default: shipped H100)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    profile = load_profile(args.profile) if args.profile else profile_for("h100", "llama-3.1-8b")
    result = {"profile": args.profile or profile.name, "records": {}}
    for path in args.records:
        record = json.loads(Path(path).read_text())
        parts = {}
        for part, entry in record["parts"].items():
            if "goodput" not in entry or part not in FLEETS:
                continue
            rows = resimulate(record, part, profile)
            target = entry["goodput"]["attainment"]
            parts[part] = {"rows": rows, "goodput_real": goodput(rows, "real", target),
                           "goodput_sim": goodput(rows, "sim", target)}  # fmt: skip
            print(f"\n{path} [{part}] ({record['commit']}): goodput real "
                  f"{parts[part]['goodput_real']:g}, sim {parts[part]['goodput_sim']:g} req/s")
            print(f"{'rate':>6} {'attain real/sim':>16} {'TTFT p90 real/sim ms':>22} "
                  f"{'TPOT p90 real/sim ms':>21}")  # fmt: skip
            for r in rows:
                a, b = r["real"], r["sim"]
                print(f"{r['rate']:>6g} {100 * a['attainment']:>7.1f}/{100 * b['attainment']:<7.1f}"
                      f" {a['p90_ttft_ms']:>10.0f}/{b['p90_ttft_ms']:<10.0f}"
                      f" {a['p90_tpot_ms']:>9.1f}/{b['p90_tpot_ms']:<9.1f}")  # fmt: skip
        result["records"][path] = parts
    out = Path(args.out) if args.out else Path(args.records[0]).with_name("sim_pd_fidelity.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
