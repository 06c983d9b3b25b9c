"""Where an eager prefill step's host time goes (GPU): N lone prompts through the offline
engine, each step's host launch timed, then the same under cProfile (top functions by own
time), at two torch CPU thread counts.

    python benchmarks/probe_prefill_launch.py --model dummy:llama-3.1-8b --prompt-len 512
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import statistics
import time

import torch

from pdserve.engine.llm import LLM
from pdserve.types import SamplingParams


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="dummy:llama-3.1-8b")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--num", type=int, default=20)
    p.add_argument("--threads", default="16,1")
    p.add_argument("--device", default="cuda")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--multiple", type=int, default=1, help="lengths rounded down to this")
    p.add_argument("--range-ratio", type=float, default=0.0, help="len x [1-r, 1+r]")
    args = p.parse_args()
    llm = LLM(args.model, device=args.device, max_model_len=min(4096, 8 * args.prompt_len))
    runner = llm.core.executor
    rng = random.Random(0)

    m = args.multiple
    lo = int(args.prompt_len * (1 - args.range_ratio))
    hi = int(args.prompt_len * (1 + args.range_ratio))

    def prompt():
        return [rng.randrange(10, args.vocab_size) for _ in range(rng.randint(lo, hi) // m * m)]

    launches: list[float] = []
    launch = runner.launch

    def timed_launch(plan):
        t = time.perf_counter()
        handle = launch(plan)
        launches.append(time.perf_counter() - t)
        return handle

    runner.launch = timed_launch
    one = SamplingParams(max_tokens=1)
    for _ in range(3):
        llm.generate([prompt()], one)
    for threads in (int(x) for x in args.threads.split(",")):
        torch.set_num_threads(threads)
        launches.clear()
        walls = []
        for _ in range(args.num):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            llm.generate([prompt()], one)
            walls.append(time.perf_counter() - t)
        print("launch ms in order:", " ".join(f"{1e3 * x:.1f}" for x in launches))
        ms = sorted(1e3 * x for x in launches) or [float("nan")]
        print(f"threads {threads}: launch ms p50 {statistics.median(ms):.2f} min {ms[0]:.2f} "
              f"max {ms[-1]:.2f} (n={len(ms)}); request wall p50 "
              f"{1e3 * statistics.median(walls):.2f} ms", flush=True)  # fmt: skip
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.num):
            llm.generate([prompt()], one)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue()[-6000:], flush=True)


if __name__ == "__main__":
    main()
