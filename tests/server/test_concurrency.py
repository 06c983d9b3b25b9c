"""Many streams at once, and streams cancelled midway: usage stays exact, blocks come back."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai

from tests.server.conftest import SMOL_MODEL

NUM_STREAMS = 32
NUM_CANCELLED = 10


def prompts(n: int) -> list[str]:
    return [f"Request {i}: write a word about the number {i}." for i in range(n)]


def test_32_concurrent_streams_finish_with_correct_usage(smol_server):
    async def one(client, prompt: str, max_tokens: int):
        stream = await client.completions.create(
            model=SMOL_MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0.7, seed=1,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )  # fmt: skip
        chunks = [c async for c in stream]
        return chunks

    async def run():
        client = openai.AsyncOpenAI(base_url=f"{smol_server.url}/v1", api_key="none",
                                    max_retries=0, timeout=120)  # fmt: skip
        return await asyncio.gather(
            *[one(client, p, 4 + i % 5) for i, p in enumerate(prompts(NUM_STREAMS))]
        )

    tokenized = [httpx.post(f"{smol_server.url}/tokenize", json={"prompt": p}).json()
                 for p in prompts(NUM_STREAMS)]  # fmt: skip
    results = asyncio.run(run())
    for i, (tok, chunks) in enumerate(zip(tokenized, results)):
        usage = chunks[-1].usage
        assert usage.prompt_tokens == tok["count"]
        assert usage.completion_tokens == 4 + i % 5
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert reasons[-1] == "length" and reasons.count("length") == 1


def test_cancelled_streams_free_their_blocks(smol_server):
    async def cancel_midway(client, prompt: str) -> int:
        stream = await client.completions.create(
            model=SMOL_MODEL, prompt=prompt, max_tokens=200, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        num_chunks = 0
        async for _ in stream:
            num_chunks += 1
            if num_chunks == 3:
                break
        await stream.close()
        return num_chunks

    async def run():
        client = openai.AsyncOpenAI(base_url=f"{smol_server.url}/v1", api_key="none",
                                    max_retries=0, timeout=120)  # fmt: skip
        return await asyncio.gather(*[cancel_midway(client, p) for p in prompts(NUM_CANCELLED)])

    assert asyncio.run(run()) == [3] * NUM_CANCELLED
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        snapshot = smol_server.debug_status()["snapshot"]
        if snapshot["num_running"] == 0 and snapshot["num_waiting"] == 0:
            break
        time.sleep(0.05)
    assert snapshot["num_running"] == 0 and snapshot["num_waiting"] == 0
    assert snapshot["num_free_blocks"] == snapshot["num_total_blocks"]  # free or cached
    assert smol_server.check_integrity() == {"ok": True}
