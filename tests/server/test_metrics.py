"""/metrics parses with the Prometheus text parser; its counters move by what was sent."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pdserve import metrics as M
from tests.server.conftest import SMOL_MODEL

NUM_REQUESTS = 3
MAX_TOKENS = 5


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_counters_match_the_requests_sent(smol_server):
    before = scrape(smol_server.url)
    num_prompt = 0
    for i in range(NUM_REQUESTS):
        r = httpx.post(f"{smol_server.url}/v1/completions", timeout=60, json={
            "model": SMOL_MODEL, "prompt": f"Metrics probe number {i} says", "temperature": 0,
            "max_tokens": MAX_TOKENS, "ignore_eos": True,
        })  # fmt: skip
        assert r.status_code == 200
        num_prompt += r.json()["usage"]["prompt_tokens"]
    after = scrape(smol_server.url)

    def delta(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    length = {M.FINISHED_REASON_LABEL: "length"}
    assert delta(M.PROMPT_TOKENS_TOTAL) == num_prompt
    assert delta(M.GENERATION_TOKENS_TOTAL) == NUM_REQUESTS * MAX_TOKENS
    assert delta(M.REQUEST_SUCCESS_TOTAL, **length) == NUM_REQUESTS
    assert delta(M.TTFT_SECONDS + "_count") == NUM_REQUESTS
    assert delta(M.E2E_SECONDS + "_count") == NUM_REQUESTS
    assert delta(M.ITL_SECONDS + "_count") == NUM_REQUESTS * (MAX_TOKENS - 1)
    assert delta(M.QUEUE_TIME_SECONDS + "_count") == NUM_REQUESTS
    assert delta(M.PREFIX_CACHE_QUERIES_TOTAL) == num_prompt  # no preemption: one lookup each
    assert 0 <= delta(M.PREFIX_CACHE_HITS_TOTAL) <= num_prompt
    assert delta(M.NUM_PREEMPTIONS_TOTAL) == 0
    assert after[(M.NUM_REQUESTS_RUNNING, ())] == 0
    assert after[(M.NUM_REQUESTS_WAITING, ())] == 0
    assert 0 <= after[(M.KV_CACHE_USAGE_PERC, ())] <= 1
