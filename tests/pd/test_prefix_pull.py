"""Remote prefix pull end to end on CPU: two fused workers (tiny random Llama) with NIXL, round
robin routing so the second request of a shared prefix lands on the instance that lacks it."""

from __future__ import annotations

import asyncio
import re

import httpx
from prometheus_client import generate_latest

from pdserve.cluster.controller import ControllerConfig
from pdserve.cluster.pull import PullConfig
from pdserve.engine import protocol as P
from tests.cluster.conftest import start_fleet
from tests.cluster.harness import fleet, request, run_request, token_ids

BS = 16
ENGINE_ARGV = ("--max-model-len", "256", "--num-blocks", "64", "--block-size", str(BS))
MAX_TOKENS = 6
PREFIX = [(7 * j) % 400 + 3 for j in range(3 * BS)]  # three full blocks
FIRST = PREFIX + [401, 402, 403, 404]
SECOND = PREFIX + [411, 412, 413, 414, 415]


def completion(url: str, prompt: list[int]) -> tuple[list[int], int]:
    """(greedy token ids, cached prompt tokens) of one completion."""
    body = {"model": "dummy:tiny-llama", "prompt": prompt, "max_tokens": MAX_TOKENS,
            "temperature": 0, "ignore_eos": True, "logprobs": 0}  # fmt: skip
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()
    ids = [int(t.strip("<>")) for t in data["choices"][0]["logprobs"]["tokens"]]
    return ids, data["usage"]["prompt_tokens_details"]["cached_tokens"]


def samples(text: str, name: str) -> dict[str, float]:
    """Label set -> value of every sample of `name` in a Prometheus text page."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.M)
    return {labels or "": float(value) for labels, value in pattern.findall(text)}


def test_pdserve_up_pulls_a_prefix_cached_on_the_other_instance(reference):
    fleet_proc = start_fleet(
        "dummy:tiny-llama", "--instances", "2", "--routing", "round_robin",
        "--prefix-pull", "always", *ENGINE_ARGV,
    )  # fmt: skip
    try:
        first, first_cached = completion(fleet_proc.url, FIRST)
        asyncio.run(asyncio.sleep(0.5))  # the holder's KV events reach the prefix index
        second, second_cached = completion(fleet_proc.url, SECOND)
        text = httpx.get(f"{fleet_proc.url}/metrics", timeout=10).text
    finally:
        fleet_proc.stop()
    assert [first, second] == reference([FIRST, SECOND], MAX_TOKENS)
    assert (first_cached, second_cached) == (0, 3 * BS)
    assert samples(text, "pdserve:prefix_pull_tokens_total") == {'{outcome="pulled"}': 3 * BS}
    hits = samples(text, "pdserve:controller_prefix_hit_tokens_total")
    assert sorted(hits.values()) == [3 * BS]  # only the receiving instance, only the pulled part


def test_failed_pull_recomputes_with_identical_output(reference):
    config = ControllerConfig(routing="round_robin", pull=PullConfig(mode="always"))
    argv = (*ENGINE_ARGV, "--kv-transport", "nixl")

    async def main():
        async with fleet(2, fake=False, worker_argv=argv, config=config) as (ctrl, _):
            first = await run_request(ctrl, request("first", FIRST, MAX_TOKENS))
            await asyncio.sleep(0.5)
            holder = next(r.instance_id for r in ctrl.registry.live() if ctrl.index.num_blocks(
                r.instance_id))  # fmt: skip
            fault = {"kind": "truncate", "request_id": "second@pull"}
            await ctrl.call(holder, "kv_fault", fault)
            second = await run_request(ctrl, request("second", SECOND, MAX_TOKENS))
            text = generate_latest(ctrl.metrics.registry).decode()
            for record in ctrl.registry.live():
                status = await ctrl.call(record.instance_id, "kv_status")
                assert not (status["sending"] or status["receiving"] or status["inflight"])
                await ctrl.call(record.instance_id, "check_integrity")
            stats = [
                P.decode_status(await ctrl.call(r.instance_id, "status")).stats
                for r in ctrl.registry.live()
            ]
            return first, second, text, stats

    first, second, text, stats = asyncio.run(main())
    assert [token_ids(first), token_ids(second)] == reference([FIRST, SECOND], MAX_TOKENS)
    assert second[0].num_cached_tokens == 0  # nothing landed: the prefix was recomputed
    assert samples(text, "pdserve:prefix_pull_tokens_total") == {'{outcome="recomputed"}': 3 * BS}
    assert samples(text, "pdserve:prefix_pulls_total") == {'{outcome="failed"}': 1.0}
    assert sum(s.prefix_hits for s in stats) == 0
