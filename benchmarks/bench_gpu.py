"""pdserve on one GPU against HF transformers in the same run, on the same weights.

    PYTHONPATH=. python benchmarks/bench_gpu.py [--models llama-3.1-8b,qwen3-0.6b]
        [--parts w1,profile,nano,ss,ss_kernels,hf] [--requests 256]

Per model: W1 (256 requests, prompts uniform [100, 1024] from random.Random(0), 256 new tokens,
EOS ignored) output tok/s and fraction of the card's floor; a W1 rerun with per-step timing
(CPU prepare / launch / wait, GPU span, scheduler + update); W1-nano (outputs uniform
[100, 1024]); single stream (512-token prompt, 128 new tokens); then HF `generate_batch`
("paged|sdpa") on W1 and HF `generate` single stream with the engine's weights. Prints a table
last; writes JSON (and the log when run with `| tee`) to $OUT (default: .).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import time
import traceback

import torch

from pdserve.bench.floor import SHAPES, floor, measure_card
from pdserve.bench.workload import BenchRequest, w1_nano_workload, w1_workload
from pdserve.engine.llm import LLM
from pdserve.types import SamplingParams

OUT = os.environ.get("OUT", ".")


def emit(results: list, **row) -> None:
    results.append(row)
    print(json.dumps(row), flush=True)
    with open(os.path.join(OUT, "bench_gpu.jsonl"), "a") as f:  # survives a killed run
        f.write(json.dumps(row) + "\n")


def warm_up(llm: LLM, num_requests: int = 256) -> None:
    """Steps shaped like W1's and the single stream's, on other prompts, so that Triton compiles
    every kernel variant they use before the clock starts."""
    rng = random.Random(1)
    prompts = [
        [rng.randint(10, 30000) for _ in range(rng.randint(100, 1024))] for _ in range(num_requests)
    ]
    params = SamplingParams(max_tokens=8, ignore_eos=True, temperature=0.0)
    llm.generate(prompts, params)
    llm.generate([prompts[0][:512]], params)


def timed_generate(llm: LLM, requests) -> tuple[float, int]:
    prompts = [list(r.prompt_token_ids) for r in requests]
    params = [
        SamplingParams(max_tokens=r.output_len, ignore_eos=True, temperature=0.0) for r in requests
    ]
    torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(o.token_ids) for o in outputs)


def step_profile(llm: LLM, requests) -> dict:
    """Rerun the workload with per-step timing; summarize decode (graph) and eager steps."""
    core, runner = llm.core, llm.core.executor
    sched = core.scheduler
    sched_s = []
    schedule, update = sched.schedule, sched.update

    def timed(fn):
        def wrapper(*args):
            t = time.perf_counter()
            out = fn(*args)
            sched_s[-1] += time.perf_counter() - t
            return out

        return wrapper

    def timed_schedule(now):
        sched_s.append(0.0)
        return timed(schedule)(now)

    sched.schedule, sched.update = timed_schedule, timed(update)
    runner.timer.reset()
    runner.timer.enabled = True
    elapsed, _ = timed_generate(llm, requests)
    runner.timer.enabled = False
    sched.schedule, sched.update = schedule, update
    steps = runner.timer.resolve()
    summary = {"elapsed_s": elapsed, "num_steps": len(steps),
               "async_scheduling": core.async_scheduling}  # fmt: skip
    for kind in ("graph", "eager"):
        rows = [s for s in steps if s.kind == kind]
        if not rows:
            continue
        med = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
        summary[kind] = {
            "steps": len(rows),
            "total_s": sum(s.prepare_s + s.launch_s + s.wait_s for s in rows),
            "median_batch": statistics.median(s.num_seqs for s in rows),
            "prepare_ms": med([s.prepare_s for s in rows]),
            "launch_ms": med([s.launch_s for s in rows]),
            "wait_ms": med([s.wait_s for s in rows]),
            "gpu_span_ms": med([s.gpu_span_s for s in rows]),
            "gpu_total_s": sum(s.gpu_span_s for s in rows),
            "gpu_gap_ms": med([s.gpu_gap_s for s in rows]),
            "gpu_gap_total_s": sum(s.gpu_gap_s for s in rows),
        }
    summary["sched_update_ms_median"] = 1e3 * statistics.median(sched_s) if sched_s else 0.0
    summary["sched_update_total_s"] = sum(sched_s)
    return summary


def compiled_kernels() -> set[str]:
    """Compiled variants of our Triton kernels so far (JIT inside a timed run shows here)."""
    from pdserve.model.ops import triton_attention, triton_elementwise, triton_kv_store

    keys = set()
    for module in (triton_attention, triton_elementwise, triton_kv_store):
        for name, obj in vars(module).items():
            for cache, *_ in getattr(obj, "device_caches", {}).values():
                keys.update(f"{name}:{key}" for key in cache)
    return keys


def kernel_profile(llm: LLM, prompt: list[int], new_tokens: int) -> dict:
    """GPU kernels of a single stream's decode steps (torch.profiler sees the kernels a CUDA
    graph replays): per kernel name, launches and GPU µs per output token, largest first."""
    from torch.profiler import ProfilerActivity, profile

    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True, temperature=0.0)
    llm.generate([prompt], params)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        llm.generate([prompt], params)
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", 0.0) or getattr(e, "cuda_time_total", 0.0)
        if us > 0:
            rows.append((e.key, e.count, us))
    rows.sort(key=lambda r: -r[2])
    total = sum(r[2] for r in rows)
    # The prompt's prefill step is in the profile too: its kernels show as extra launches.
    return {
        "new_tokens": new_tokens,
        "gpu_us_per_token": total / new_tokens,
        "launches_per_token": sum(r[1] for r in rows) / new_tokens,
        "kernels": [
            {"name": k[:160], "launches_per_token": c / new_tokens, "us_per_token": us / new_tokens}
            for k, c, us in rows[:40]
        ],
    }


def hf_from(model, attn: str):
    """HF transformers' model in the same shape, loaded with `model`'s weights (no copy kept)."""
    from transformers import AutoModelForCausalLM

    from pdserve.model.hf_compat import to_hf_config
    from pdserve.model.llama import iter_hf_weights

    config = to_hf_config(model.config)
    config.eos_token_id, config.pad_token_id, config.bos_token_id = None, 0, None
    with torch.device("cuda"):
        hf = AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16, attn_implementation=attn
        )
    state = dict(iter_hf_weights(model))
    if model.config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state)
    return hf.eval()


def hf_w1(hf, requests) -> tuple[float, int]:
    from transformers import GenerationConfig

    new = requests[0].output_len
    gc_ = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           eos_token_id=None, pad_token_id=0)  # fmt: skip
    prompts = [list(r.prompt_token_ids) for r in requests]
    hf.generate_batch(inputs=prompts[:8], generation_config=gc_, progress_bar=False)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    res = hf.generate_batch(inputs=prompts, generation_config=gc_, progress_bar=False)
    torch.cuda.synchronize()
    return time.perf_counter() - start, sum(len(r.generated_tokens) for r in res.values())


def hf_single_stream(hf, prompt: list[int], new: int) -> float:
    from transformers import GenerationConfig

    gc_ = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           eos_token_id=None, pad_token_id=0)  # fmt: skip
    ids = torch.tensor([prompt], device="cuda")
    hf.generate(ids, generation_config=gc_)
    torch.cuda.synchronize()
    start = time.perf_counter()
    hf.generate(ids, generation_config=gc_)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_model(name: str, parts: set[str], args, card, results: list) -> None:
    shape = SHAPES[name]
    start = time.perf_counter()
    llm = LLM(f"dummy:{name}", max_num_seqs=256, max_num_batched_tokens=args.max_num_batched_tokens,
              max_model_len=2304, enforce_eager=args.enforce_eager,
              enable_prefix_caching=False)  # fmt: skip
    runner = llm.core.executor
    emit(results, what="startup", model=name, s=time.perf_counter() - start,
         num_blocks=llm.core.scheduler.kv.num_blocks,
         graph_sizes=len(runner.graphs.sizes) if runner.graphs else 0)  # fmt: skip
    w1 = w1_workload(args.requests)
    start = time.perf_counter()
    warm_up(llm)
    emit(results, what="warm_up", model=name, s=time.perf_counter() - start)
    fl = floor(shape, [r.prompt_len for r in w1], [r.output_len for r in w1], card)
    if "w1" in parts:
        for run in ("first", "second"):
            compiled = compiled_kernels()
            elapsed, out = timed_generate(llm, w1)
            new = sorted(compiled_kernels() - compiled)
            emit(results, what="pdserve_w1", model=name, run=run, s=elapsed, output_tokens=out,
                 output_tok_per_s=out / elapsed, floor_tok_per_s=fl.output_tok_per_s,
                 fraction_of_floor=out / elapsed / fl.output_tok_per_s,
                 kernels_compiled_during_run=len(new),
                 new_kernels=[k[:600] for k in new])  # fmt: skip
    if "profile" in parts:
        emit(results, what="pdserve_w1_profile", model=name, **step_profile(llm, w1))
    if "sync" in parts:  # the same engine with async scheduling off, for comparison
        llm.core.async_scheduling = False
        elapsed, out = timed_generate(llm, w1)
        emit(results, what="pdserve_w1_sync_sched", model=name, s=elapsed, output_tokens=out,
             output_tok_per_s=out / elapsed,
             fraction_of_floor=out / elapsed / fl.output_tok_per_s)  # fmt: skip
        emit(results, what="pdserve_w1_sync_profile", model=name, **step_profile(llm, w1))
        llm.core.async_scheduling = True
    if "nano" in parts:
        nano = w1_nano_workload(args.requests)
        elapsed, out = timed_generate(llm, nano)
        fl = floor(shape, [r.prompt_len for r in nano], [r.output_len for r in nano], card)
        rate = out / elapsed
        emit(results, what="pdserve_w1_nano", model=name, s=elapsed, output_tokens=out,
             output_tok_per_s=rate, fraction_of_floor=rate / fl.output_tok_per_s)  # fmt: skip
    prompt = list(
        torch.randint(10, 30000, (512,), generator=torch.Generator().manual_seed(0)).tolist()
    )
    single_stream = "ss" in parts and name in args.ss_models.split(",")
    if single_stream:
        params = SamplingParams(max_tokens=128, ignore_eos=True, temperature=0.0)
        llm.generate([prompt], params)
        torch.cuda.synchronize()
        t = time.perf_counter()
        llm.generate([prompt], params)
        elapsed = time.perf_counter() - t
        emit(
            results,
            what="pdserve_single_stream",
            model=name,
            s=elapsed,
            ms_per_token=elapsed / 128 * 1e3,
        )
        ss = [BenchRequest("ss", tuple(prompt), 128)]
        emit(results, what="pdserve_single_stream_profile", model=name, **step_profile(llm, ss))
        if "ss_kernels" in parts:
            emit(results, what="pdserve_single_stream_kernels", model=name,
                 **kernel_profile(llm, prompt, 64))  # fmt: skip
    if "hf" not in parts:
        return
    model = runner.model
    del llm, runner
    gc.collect()
    torch.cuda.empty_cache()
    hf = hf_from(model, "paged|sdpa")
    del model
    gc.collect()
    torch.cuda.empty_cache()
    elapsed, out = hf_w1(hf, w1)
    emit(
        results,
        what="hf_w1",
        model=name,
        s=elapsed,
        output_tokens=out,
        output_tok_per_s=out / elapsed,
    )
    if single_stream:
        try:
            hf.set_attn_implementation("sdpa")
        except Exception as e:  # keep the paged one: still HF generate, said in the JSON
            emit(results, what="hf_set_attn_error", model=name, error=str(e)[:300])
        elapsed = hf_single_stream(hf, prompt, 128)
        emit(
            results,
            what="hf_single_stream",
            model=name,
            s=elapsed,
            ms_per_token=elapsed / 128 * 1e3,
        )
    del hf
    gc.collect()
    torch.cuda.empty_cache()


def table(results: list) -> str:
    lines = [f"{'measure':34} {'model':14} {'value':>14}"]
    for r in results:
        what = r["what"]
        if what in ("pdserve_w1", "pdserve_w1_nano", "hf_w1", "pdserve_w1_sync_sched"):
            what = f"{what} ({r['run']})" if "run" in r else what
            extra = (
                f"  ({100 * r['fraction_of_floor']:.1f} % of floor)"
                if "fraction_of_floor" in r
                else ""
            )
            lines.append(f"{what:34} {r['model']:14} {r['output_tok_per_s']:>10,.0f} tok/s{extra}")
        elif what.endswith("single_stream"):
            lines.append(f"{what:34} {r['model']:14} {r['ms_per_token']:>11.2f} ms/tok")
        elif what == "pdserve_single_stream_kernels":
            lines.append(f"{what:34} {r['model']:14} {r['gpu_us_per_token']:>11.0f} µs/tok GPU, "
                         f"{r['launches_per_token']:.0f} kernels/tok")  # fmt: skip
            for k in r["kernels"][:15]:
                lines.append(f"    {k['us_per_token']:8.1f} µs {k['launches_per_token']:6.1f}x  "
                             f"{k['name'][:90]}")  # fmt: skip
        elif what in ("startup", "warm_up"):
            lines.append(f"{what:34} {r['model']:14} {r['s']:>13.1f} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="llama-3.1-8b,qwen3-0.6b")
    parser.add_argument("--parts", default="w1,profile,sync,nano,ss,hf")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--ss-models", default="llama-3.1-8b", help="models timed single stream")
    args = parser.parse_args()
    results: list = []
    card = measure_card()
    import transformers

    emit(results, what="card", gpu=torch.cuda.get_device_name(0), torch=torch.__version__,
         transformers=transformers.__version__, date=time.strftime("%Y-%m-%d"),
         copy_bw_gbps=card.copy_bandwidth_gbps, bf16_matmul_tflops=card.matmul_tflops)  # fmt: skip
    gc.collect()
    torch.cuda.empty_cache()
    for name in args.models.split(","):
        try:
            bench_model(name, set(args.parts.split(",")), args, card, results)
        except Exception:
            emit(results, what="error", model=name, tb=traceback.format_exc()[-1500:])
        gc.collect()
        torch.cuda.empty_cache()
    tag = args.models.replace(",", "_")
    with open(os.path.join(OUT, f"bench_gpu_{tag}.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\ncard {results[0]['gpu']}: copy {card.copy_bandwidth_gbps:,.0f} GB/s, "
          f"bf16 matmul {card.matmul_tflops:,.0f} TFLOP/s, {results[0]['date']}")  # fmt: skip
    print(table(results))


if __name__ == "__main__":
    main()
