"""`pdserve bench serve` against `pdserve serve` (embedded model): the run completes, writes
its JSON and PNG, and its request and token counts match the server's /metrics counters."""

import json
import subprocess
import sys

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import SMOL_MODEL

NUM_PROMPTS = 12


def counters(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def test_bench_serve_against_pdserve_matches_server_metrics(smol_server, tmp_path):
    before = counters(smol_server.url)
    cmd = [
        sys.executable, "-m", "pdserve", "bench", "serve",
        "--base-url", smol_server.url, "--model", SMOL_MODEL,
        "--dataset-name", "random", "--num-prompts", str(NUM_PROMPTS),
        "--random-input-len", "48", "--random-output-len", "12",
        "--request-rate", "inf", "--max-concurrency", "4", "--seed", "3",
        "--goodput", "ttft:5000", "tpot:1000",
        "--save-result", "--result-dir", str(tmp_path), "--result-filename", "run.json",
        "--plot", "--disable-tqdm",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    after = counters(smol_server.url)

    summary = json.loads((tmp_path / "run.json").read_text())["summary"]
    assert summary["completed"] == NUM_PROMPTS and summary["failed"] == 0
    assert list(tmp_path.glob("*.png")), "no plot written"
    delta = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
    assert delta["pdserve:request_success_total"] == NUM_PROMPTS
    assert delta["pdserve:generation_tokens_total"] == summary["total_output_tokens"]
    assert delta["pdserve:prompt_tokens_total"] == summary["total_input_tokens"]
    assert summary["total_output_tokens"] == NUM_PROMPTS * 12  # ignore_eos is honoured
