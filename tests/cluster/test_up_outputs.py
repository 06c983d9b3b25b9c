"""`pdserve up --instances 3` serves the OpenAI API with the same greedy outputs as one engine."""

from __future__ import annotations

import httpx
import pytest

from pdserve.engine.llm import LLM
from pdserve.types import SamplingParams

MAX_TOKENS = 8
PROMPTS = [[(7 * i + j) % 500 + 1 for j in range(5 + 3 * i)] for i in range(9)]


@pytest.fixture(scope="module")
def reference_ids() -> list[list[int]]:
    llm = LLM("dummy:tiny-llama", max_model_len=128, num_blocks=64)
    sampling = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    return [out.token_ids for out in llm.generate(PROMPTS, sampling)]


def completion_ids(url: str, prompt: list[int]) -> tuple[list[int], int]:
    body = {
        "model": "dummy:tiny-llama",
        "prompt": prompt,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "logprobs": 0,
    }
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    tokens = r.json()["choices"][0]["logprobs"]["tokens"]
    return [int(t.strip("<>")) for t in tokens], r.status_code


def test_outputs_through_three_instances_equal_one_engine(tiny_fleet, reference_ids):
    got = [completion_ids(tiny_fleet.url, p)[0] for p in PROMPTS]
    assert got == reference_ids


def test_requests_spread_over_every_instance(tiny_fleet):
    for p in PROMPTS[:3]:
        completion_ids(tiny_fleet.url, p)
    text = httpx.get(f"{tiny_fleet.url}/metrics", timeout=10).text
    routed = [
        line
        for line in text.splitlines()
        if line.startswith("pdserve:controller_routed_requests_total{")
    ]
    assert sorted(line.split('"')[1] for line in routed) == ["worker-0", "worker-1", "worker-2"]
    assert "pdserve:controller_routing_decision_seconds_count" in text
    assert "pdserve:controller_measured_ttft_seconds_count" in text
