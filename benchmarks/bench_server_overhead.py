"""Server overhead on CPU: TTFT and ITL p50 of `pdserve serve` (HTTP + SSE + worker process hop)
versus in-process `LLM.generate`, same prompts, same thread count, one request at a time.

    .venv/bin/python benchmarks/bench_server_overhead.py [--model M] [--threads 2] [--out F]

Both sides ask for logprobs=0 so the server streams exactly one chunk per token. The server is
measured first and stopped before the in-process engine loads, so they never share the cores.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time

import httpx

from pdserve.metrics import percentile

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "List three uses of copper:",
    "Explain what a KV cache is in one sentence.",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_server(args) -> tuple[list[float], list[float]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "pdserve.cli", "serve", args.model, "--port", str(port),
           "--worker-threads", str(args.threads), "--max-model-len", "1024"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        ttfts, itls = [], []
        for i, prompt in enumerate(PROMPTS * args.repeat):
            body = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens,
                    "temperature": 0, "ignore_eos": True, "logprobs": 0,
                    "stream": True}  # fmt: skip
            times = []
            start = time.perf_counter()
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        times.append(time.perf_counter())
            if i >= args.warmup:
                ttfts.append(times[0] - start)
                itls.extend(b - a for a, b in zip(times, times[1:]))
        return ttfts, itls
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def bench_in_process(args) -> tuple[list[float], list[float]]:
    import torch

    from pdserve.engine.llm import LLM
    from pdserve.types import SamplingParams

    torch.set_num_threads(args.threads)
    llm = LLM(args.model, max_model_len=1024)
    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True,
                              logprobs=0)  # fmt: skip
    ttfts, itls = [], []
    for i, prompt in enumerate(PROMPTS * args.repeat):
        out = llm.generate(prompt, sampling)[0]
        if i >= args.warmup:
            ttfts.append(out.first_token_s - out.arrival_s)
            t = out.token_times_s
            itls.extend(b - a for a, b in zip(t, t[1:]))
    return ttfts, itls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default="server_overhead.json")
    args = parser.parse_args()

    server = bench_server(args)
    local = bench_in_process(args)
    rows = {}
    for name, (ttfts, itls) in (("pdserve serve", server), ("LLM.generate", local)):
        rows[name] = {"ttft_p50_ms": percentile(ttfts, 50) * 1e3,
                      "itl_p50_ms": percentile(itls, 50) * 1e3,
                      "num_requests": len(ttfts), "num_itls": len(itls)}  # fmt: skip
    overhead = {k: rows["pdserve serve"][k] - rows["LLM.generate"][k]
                for k in ("ttft_p50_ms", "itl_p50_ms")}  # fmt: skip
    print(f"{'':16} {'TTFT p50 ms':>12} {'ITL p50 ms':>12} {'requests':>9}")
    for name, row in rows.items():
        print(f"{name:16} {row['ttft_p50_ms']:12.2f} {row['itl_p50_ms']:12.2f} "
              f"{row['num_requests']:9d}")  # fmt: skip
    print(f"{'overhead':16} {overhead['ttft_p50_ms']:12.2f} {overhead['itl_p50_ms']:12.2f}")
    result = {"config": vars(args), "results": rows, "overhead_ms": overhead}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
