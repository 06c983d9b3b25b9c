"""`pdserve bench offline`: in-process throughput, and on a GPU the ratio to the card's floor."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pdserve.bench.datasets import build_workload
from pdserve.bench.floor import SHAPES, CardSpec, floor, measure_card
from pdserve.bench.offline import run_offline


def _card(args: argparse.Namespace) -> CardSpec | None:
    if args.measure_card:
        return measure_card()
    if args.copy_bandwidth_gbps and args.matmul_tflops:
        return CardSpec(args.copy_bandwidth_gbps, args.matmul_tflops)
    return None


def main_offline(args: argparse.Namespace) -> int:
    try:
        requests = build_workload(args)
        if args.floor_shape is not None and args.floor_shape not in SHAPES:
            raise ValueError(f"--floor-shape must be one of {sorted(SHAPES)}")
    except (ValueError, OSError) as e:
        print(f"pdserve bench offline: error: {e}", file=sys.stderr)
        return 2
    options = {}
    if args.backend == "hf":
        options = {"attn": args.hf_attn, "device": args.device}
    result = run_offline(requests, args.backend, args.model, **options)
    out = {"kind": "offline", "dataset": args.dataset_name, **result.to_dict()}
    card = _card(args)
    shape = args.floor_shape or (args.model.split(":", 1)[1] if ":" in args.model else None)
    if card is not None and shape in SHAPES:
        lens = [r.prompt_len for r in requests], [r.output_len for r in requests]
        fl = floor(SHAPES[shape], *lens, card)
        out.update(
            card=repr(card),
            floor_s=fl.floor_s,
            floor_out_tok_per_s=fl.output_tok_per_s,
            fraction_of_floor=result.output_tok_per_s / fl.output_tok_per_s,
        )
    print(
        f"{args.backend} on {args.dataset_name}: {result.num_requests} requests in "
        f"{result.elapsed_s:.2f} s, {result.output_tok_per_s:,.0f} output tok/s, "
        f"{result.total_tok_per_s:,.0f} total tok/s"
        + (f", {100 * out['fraction_of_floor']:.1f} % of the floor" if "floor_s" in out else "")
    )
    if args.save_result:
        path = (
            Path(args.result_dir) / f"offline-{args.backend}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2))
        print(f"wrote {path}")
    return 0
