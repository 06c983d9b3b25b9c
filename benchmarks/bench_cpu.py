"""CPU throughput of the embedded SmolLM2-135M-Instruct: pdserve vs HF transformers `generate`,
same chat prompts, same run, at batch 1 and batch 16 (issue 2's measure).

    .venv/bin/python benchmarks/bench_cpu.py [--out results/bench_cpu.json] [--threads 2]

Greedy, 128 new tokens with EOS ignored, float32 on both sides (the GGUF is dequantized). Batch 1
runs the first `--bs1-prompts` prompts one at a time (HF at batch 1 is slow); batch 16 runs all
`--prompts` prompts, 16 at a time for HF (left-padded `generate`) and with max_num_seqs=16 for
pdserve (continuous batching).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import time

import torch

TOPICS = [
    "the moon",
    "bread",
    "rivers",
    "chess",
    "volcanoes",
    "bees",
    "trains",
    "the ocean",
    "libraries",
    "tea",
    "glaciers",
    "owls",
]
ASKS = [
    "Explain {} to a child.",
    "Write a short poem about {}.",
    "Give three facts about {}.",
    "What is the history of {}?",
    "Why do people like {}?",
    "Describe {} in one paragraph.",
]


def chat_prompts(n: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": ASKS[i % len(ASKS)].format(TOPICS[i % len(TOPICS)])}]
        for i in range(n)
    ]


def run_pdserve(llm, prompts, max_num_seqs: int, new_tokens: int) -> dict:
    from pdserve.types import SamplingParams

    scheduler = llm.core.scheduler
    scheduler.config = dataclasses.replace(scheduler.config, max_num_seqs=max_num_seqs)
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, temperature=0))  # warm-up
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    return _result("pdserve", max_num_seqs, prompts, [len(o.token_ids) for o in outs], elapsed)


def run_hf(model, prompts, batch: int, new_tokens: int) -> dict:
    model.generate(torch.tensor([prompts[0]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    num_out = []
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        group = prompts[i : i + batch]
        width = max(map(len, group))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in group])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group])
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
        num_out += [out.shape[1] - width] * len(group)
    elapsed = time.perf_counter() - start
    return _result("hf", batch, prompts, num_out, elapsed)


def _result(backend, batch, prompts, num_out, elapsed) -> dict:
    return dict(
        backend=backend,
        batch=batch,
        requests=len(prompts),
        prompt_tokens=sum(map(len, prompts)),
        output_tokens=sum(num_out),
        elapsed_s=round(elapsed, 2),
        output_tok_per_s=round(sum(num_out) / elapsed, 1),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--bs1-prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/bench_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    from pdserve.engine.llm import LLM
    from pdserve.model.loader import default_gguf_path

    llm = LLM("", dtype="float32", num_blocks=2048)
    prompts = [llm.render_chat(c) for c in chat_prompts(args.prompts)]
    path = default_gguf_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()

    rows = []
    for batch, subset in ((1, prompts[: args.bs1_prompts]), (16, prompts)):
        rows.append(run_pdserve(llm, subset, batch, args.new_tokens))
        rows.append(run_hf(hf, subset, batch, args.new_tokens))
        print(json.dumps(rows[-2]), json.dumps(rows[-1]), sep="\n", flush=True)

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    meta = dict(
        date=datetime.date.today().isoformat(),
        commit=commit,
        cpu=platform.processor() or platform.machine(),
        cores=os.cpu_count(),
        threads=args.threads,
        torch=torch.__version__,
        transformers=transformers.__version__,
    )
    print(
        f"\n{'backend':<8} {'batch':>5} {'requests':>8} {'out tok':>8} {'s':>7} {'out tok/s':>10}"
    )
    for r in rows:
        print(
            f"{r['backend']:<8} {r['batch']:>5} {r['requests']:>8} {r['output_tokens']:>8} "
            f"{r['elapsed_s']:>7} {r['output_tok_per_s']:>10}"
        )
    for batch in (1, 16):
        ours, theirs = (r["output_tok_per_s"] for r in rows if r["batch"] == batch)
        print(f"batch {batch}: pdserve / HF = {ours / theirs:.2f}x")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
