"""Every error status of the server, with its OpenAI-style body and message."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.server.conftest import SMOL_MODEL
from tests.server.fake_engine import FAKE_MODEL, FakeEngine, fake_app


def fake_post(app, path: str, body: dict, headers: dict | None = None, content=None):
    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            if content is not None:
                return await client.post(path, content=content, headers=headers)
            return await client.post(path, json=body, headers=headers)

    return asyncio.run(run())


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


COMPLETION = {"model": SMOL_MODEL, "prompt": "Hello", "max_tokens": 4}


def test_400_names_the_invalid_parameter(smol_server):
    r = httpx.post(f"{smol_server.url}/v1/completions", json={**COMPLETION, "temperature": -1})
    assert r.status_code == 400
    error = error_of(r)
    assert error["param"] == "temperature"
    assert "temperature" in error["message"] and "-1" in error["message"]


def test_400_for_prompt_plus_max_tokens_beyond_context_states_both_numbers(smol_server):
    r = httpx.post(f"{smol_server.url}/v1/completions", json={**COMPLETION, "max_tokens": 5000})
    assert r.status_code == 400
    error = error_of(r)
    assert error["param"] == "max_tokens"
    assert "1024 tokens" in error["message"]  # the context (--max-model-len 1024)
    assert "5001 tokens" in error["message"] and "5000 for the completion" in error["message"]


def test_400_for_a_body_that_is_not_json(smol_server):
    r = httpx.post(f"{smol_server.url}/v1/completions", content=b"{nope",
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400
    assert "not valid JSON" in error_of(r)["message"]


def test_404_for_an_unknown_model(smol_server):
    r = httpx.post(f"{smol_server.url}/v1/completions", json={**COMPLETION, "model": "gpt-9"})
    assert r.status_code == 404
    error = error_of(r)
    assert error["param"] == "model" and error["code"] == "model_not_found"
    assert "'gpt-9' does not exist" in error["message"] and SMOL_MODEL in error["message"]


def test_401_when_the_api_key_is_wrong_or_missing():
    app, _ = fake_app(FakeEngine(), api_key="s3cret")
    body = {"model": FAKE_MODEL, "prompt": [1, 2, 3]}
    wrong = fake_post(app, "/v1/completions", body, {"Authorization": "Bearer nope"})
    missing = fake_post(app, "/v1/completions", body)
    right = fake_post(app, "/v1/completions", body, {"Authorization": "Bearer s3cret"})
    assert wrong.status_code == missing.status_code == 401
    assert "invalid API key" in error_of(wrong)["message"]
    assert right.status_code == 200


def test_413_for_a_body_over_the_limit():
    app, _ = fake_app(FakeEngine(), max_body_bytes=1000)
    r = fake_post(app, "/v1/completions", {"model": FAKE_MODEL, "prompt": "x" * 2000})
    assert r.status_code == 413
    assert "over the limit of 1000 bytes" in error_of(r)["message"]


def test_429_with_retry_after_when_the_waiting_queue_is_full():
    engine = FakeEngine()
    engine.hold = True
    app, _ = fake_app(engine, max_waiting=2)
    body = {"model": FAKE_MODEL, "prompt": [1, 2, 3]}

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            held = [asyncio.create_task(client.post("/v1/completions", json=body))
                    for _ in range(2)]  # fmt: skip
            while engine.num_unstarted < 2:
                await asyncio.sleep(0.01)
            refused = await client.post("/v1/completions", json=body)
            engine.release.set()
            return refused, await asyncio.gather(*held)

    refused, held = asyncio.run(run())
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert "too many requests waiting" in error_of(refused)["message"]
    assert [r.status_code for r in held] == [200, 200]


def test_503_while_the_engine_is_loading():
    app, _ = fake_app(FakeEngine(ready=False))
    r = fake_post(app, "/v1/completions", {"model": FAKE_MODEL, "prompt": [1, 2]})
    assert r.status_code == 503
    assert "still loading" in error_of(r)["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_dead_engine_fails_in_flight_requests_with_an_error(stream):
    engine = FakeEngine()
    engine.hold = True
    app, _ = fake_app(engine)
    body = {"model": FAKE_MODEL, "prompt": [1, 2, 3], "stream": stream}

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            task = asyncio.create_task(client.post("/v1/completions", json=body))
            while engine.num_unstarted < 1:
                await asyncio.sleep(0.01)
            engine.error = "the engine worker exited (code -9)"
            engine.release.set()
            return await asyncio.wait_for(task, 10)

    r = asyncio.run(run())
    # Dead before the first token: streaming or not, the status line can still say so.
    assert r.status_code == 503
    assert "the engine worker exited (code -9)" in error_of(r)["message"]
