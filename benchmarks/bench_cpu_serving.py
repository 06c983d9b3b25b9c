"""CPU serving: pdserve vs llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) on the
same GGUF, driven by the same `pdserve bench serve`, in the same run (issue 4's measure).

    .venv/bin/python benchmarks/bench_cpu_serving.py --llama-cpp-python /tmp/llamacpp/bin/python

For each server: a fixed-concurrency run at 1, 4 and 16 concurrent streams (total output tok/s),
then a Poisson rate sweep with a goodput SLO. Results (JSON, PNG) go to --result-dir. Greedy text
differs between the two (quantized arithmetic flips near-ties): compare speed, not text.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become ready")


def start_pdserve(threads: int) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "pdserve", "serve", "--port", str(port),
           "--worker-threads", str(threads), "--max-model-len", "2048"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    return proc, url, model


def start_llama_cpp(python: str, gguf: str, threads: int) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    cmd = [python, "-m", "llama_cpp.server", "--model", gguf, "--port", str(port),
           "--n_threads", str(threads), "--n_ctx", "4096",
           # Its default cancels the running request when a new one arrives: serve them all.
           "--interrupt_requests", "False"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    return proc, url, model


def bench(url: str, model: str, label: str, out: Path, extra: list[str]) -> dict:
    name = f"{label}-{'-'.join(extra).replace('--', '').replace(',', '_')}.json"
    cmd = [sys.executable, "-m", "pdserve", "bench", "serve", "--base-url", url, "--model", model,
           "--dataset-name", "random", "--random-input-len", "128", "--random-output-len", "64",
           "--prompt-format", "text", "--seed", "0", "--label", label, "--save-result",
           "--result-dir", str(out), "--result-filename", name, "--disable-tqdm", "--plot",
           *extra]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=3600)
    return json.loads((out / name).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--llama-cpp-python", default="/tmp/llamacpp/bin/python")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--result-dir", default="results/cpu_serving")
    ap.add_argument("--sweep-rates", default="0.25,0.5,1,2,4")
    args = ap.parse_args()
    out = Path(args.result_dir)
    out.mkdir(parents=True, exist_ok=True)
    from pdserve.model.spec import default_gguf_path

    gguf = str(default_gguf_path())
    servers = {
        "pdserve": lambda: start_pdserve(args.threads),
        "llama.cpp": lambda: start_llama_cpp(args.llama_cpp_python, gguf, args.threads),
    }
    rows, sweeps = [], []
    for label, start in servers.items():
        proc, url, model = start()
        try:
            for concurrency in (1, 4, 16):
                n = max(8, 2 * concurrency)
                r = bench(
                    url,
                    model,
                    label,
                    out,
                    ["--num-prompts", str(n), "--max-concurrency", str(concurrency)],
                )
                s = r["summary"]
                rows.append(dict(server=label, concurrency=concurrency, requests=s["completed"],
                                 output_tok_per_s=s["output_throughput"],
                                 median_ttft_ms=s["median_ttft_ms"],
                                 median_itl_ms=s.get("median_itl_ms")))  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
            sweeps.append(bench(url, model, label, out, [
                "--num-prompts", "24", "--sweep-rates", args.sweep_rates,
                "--goodput", "ttft:2000", "tpot:200"]))  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(
        f"\n{'server':<10} {'streams':>7} {'out tok/s':>10} {'TTFT p50 ms':>12} {'ITL p50 ms':>11}"
    )
    for r in rows:
        print(
            f"{r['server']:<10} {r['concurrency']:>7} {r['output_tok_per_s']:>10.1f} "
            f"{r['median_ttft_ms']:>12.0f} {r['median_itl_ms'] or 0:>11.1f}"
        )
    ours, theirs = (r["output_tok_per_s"] for r in rows if r["concurrency"] == 16)
    print(f"16 streams: pdserve / llama.cpp = {ours / theirs:.2f}x")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    meta = dict(
        date=time.strftime("%Y-%m-%d"), commit=commit, threads=args.threads, cores=os.cpu_count()
    )
    (out / "summary.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    subprocess.run([sys.executable, "-m", "pdserve", "bench", "plot",
                    *[str(p) for p in sorted(out.glob("*sweep*.json"))],
                    "-o", str(out / "sweep_overlay.png")], check=False)  # fmt: skip


if __name__ == "__main__":
    main()
