"""The real `openai` client against `pdserve serve` with the embedded model: sync and async,
streaming and not, completions and chat; greedy text equals `LLM.generate`."""

from __future__ import annotations

import asyncio

import openai
import pytest

from pdserve.types import SamplingParams
from tests.server.conftest import SMOL_MODEL

PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": "Name three colors."}]
MAX_TOKENS = 12
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)


@pytest.fixture(scope="module")
def expected(reference_llm):
    completion = reference_llm.generate(PROMPT, GREEDY)[0]
    chat = reference_llm.chat(MESSAGES, GREEDY)[0]
    return {"completion": completion, "chat": chat}


def test_sync_completion_equals_llm_generate(smol_server, expected):
    client = openai.OpenAI(base_url=f"{smol_server.url}/v1", api_key="none")
    out = client.completions.create(
        model=SMOL_MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0
    )
    ref = expected["completion"]
    assert out.choices[0].text == ref.text
    assert out.choices[0].finish_reason == ref.finish_reason.value
    assert out.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert out.usage.completion_tokens == len(ref.token_ids)


def test_sync_streaming_completion_equals_llm_generate(smol_server, expected):
    client = openai.OpenAI(base_url=f"{smol_server.url}/v1", api_key="none")
    chunks = list(
        client.completions.create(
            model=SMOL_MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected["completion"].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == len(expected["completion"].token_ids)


def test_async_chat_equals_llm_chat(smol_server, expected):
    async def run():
        client = openai.AsyncOpenAI(base_url=f"{smol_server.url}/v1", api_key="none")
        return await client.chat.completions.create(
            model=SMOL_MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
        )

    out = asyncio.run(run())
    ref = expected["chat"]
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == ref.text
    assert out.choices[0].finish_reason == ref.finish_reason.value
    assert out.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert out.usage.completion_tokens == len(ref.token_ids)


def test_async_streaming_chat_equals_llm_chat(smol_server, expected):
    async def run():
        client = openai.AsyncOpenAI(base_url=f"{smol_server.url}/v1", api_key="none")
        stream = await client.chat.completions.create(
            model=SMOL_MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        return [chunk async for chunk in stream]

    chunks = asyncio.run(run())
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == expected["chat"].text
    assert chunks[-1].usage.prompt_tokens == len(expected["chat"].prompt_token_ids)


def test_n_choices_seeded_sampling_and_logprobs(smol_server):
    client = openai.OpenAI(base_url=f"{smol_server.url}/v1", api_key="none")
    out = client.chat.completions.create(
        model=SMOL_MODEL, messages=MESSAGES, max_tokens=6, temperature=0.8, seed=7, n=3,
        logprobs=True, top_logprobs=2,
    )  # fmt: skip
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert out.usage.completion_tokens == sum(len(c.logprobs.content) for c in out.choices)
    assert all(len(e.top_logprobs) == 2 for c in out.choices for e in c.logprobs.content)


def test_echo_with_max_tokens_zero_returns_prompt_logprobs(smol_server):
    client = openai.OpenAI(base_url=f"{smol_server.url}/v1", api_key="none")
    out = client.completions.create(
        model=SMOL_MODEL, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1
    )
    choice = out.choices[0]
    assert choice.text == PROMPT
    assert choice.finish_reason == "length"
    assert out.usage.completion_tokens == 0
    num_prompt = out.usage.prompt_tokens
    assert len(choice.logprobs.tokens) == num_prompt
    assert choice.logprobs.token_logprobs[0] is None
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs[1:])


def test_stop_string_ends_the_choice_with_stop(smol_server, expected):
    ref_text = expected["completion"].text
    stop = ref_text.strip().split()[0][:3]
    client = openai.OpenAI(base_url=f"{smol_server.url}/v1", api_key="none")
    out = client.completions.create(
        model=SMOL_MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stop=[stop]
    )
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].text == ref_text[: ref_text.find(stop)]
