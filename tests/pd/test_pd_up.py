"""`pdserve up --prefill 1 --decode 1` as a user starts it: the OpenAI API over a PD fleet."""

from __future__ import annotations

import httpx

from tests.cluster.conftest import start_fleet
from tests.cluster.test_up_outputs import completion_ids


def test_pd_fleet_serves_completions_and_transfer_metrics(reference):
    fleet = start_fleet(
        "dummy:tiny-llama", "--prefill", "1", "--decode", "1", "--pd-disaggregation", "always",
        "--max-model-len", "256", "--num-blocks", "64", "--block-size", "16",
    )  # fmt: skip
    try:
        prompt = [(5 * j) % 300 + 2 for j in range(40)]
        got, _ = completion_ids(fleet.url, prompt)
        text = httpx.get(f"{fleet.url}/metrics", timeout=10).text
    finally:
        fleet.stop()
    assert got == reference([prompt], 8)[0]
    assert 'pdserve:pd_requests_total{mode="disaggregated"} 1.0' in text
    assert "pdserve:pd_kv_transferred_blocks_total 3.0" in text
