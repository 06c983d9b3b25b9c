"""A model served without a tokenizer (token-id prompts): streams still carry one chunk per
token, so benchmark clients can time them."""

import json

import httpx


def test_stream_has_a_chunk_per_token_without_a_tokenizer(tiny_server):
    body = {"model": "dummy:tiny-llama", "prompt": [5, 6, 7, 8], "max_tokens": 6,
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    chunks, usage = [], None
    with httpx.stream("POST", f"{tiny_server.url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[len("data: ") :])
            if data.get("usage"):
                usage = data["usage"]
            chunks.extend(data["choices"])
    assert usage["completion_tokens"] == 6
    assert [c["finish_reason"] for c in chunks] == [None] * 5 + ["length"]
    assert all(c["text"] == "" for c in chunks)
