"""POST /v1/chat/completions: messages rendered with the model's chat template, n choices."""

from __future__ import annotations

import time

from fastapi import Request as HTTPRequest

from pdserve.engine.output import OutputTracker
from pdserve.server.errors import bad_param
from pdserve.server.generation import ServerState, make_sampling, new_id
from pdserve.server.responses import Choice, collect, finite, stream, usage
from pdserve.server.schemas import ChatCompletionRequest, ChatMessage
from pdserve.types import Logprob, TokenEvent


def render_messages(state: ServerState, messages: list[ChatMessage], add_generation_prompt: bool):
    """Token ids of the conversation, as the model's chat template lays it out."""
    tokenizer = state.tokenizer
    if tokenizer is None:
        raise bad_param("messages", "this model has no tokenizer, so no chat template")
    plain = []
    for m in messages:
        content = m.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        plain.append({"role": m.role, "content": content or ""})
    try:
        text = tokenizer.apply_chat_template(plain, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # a template may reject a conversation (raise_exception)
        raise bad_param("messages", f"the chat template rejected the messages: {e}") from None
    return tokenizer.encode(text, add_special_tokens=False)


def _logprobs(state: ServerState, lps: list[Logprob]) -> list[dict]:
    """OpenAI's chat logprobs content: one entry per generated token."""

    def entry(token_id: int, logprob: float) -> dict:
        text = state.token_text(token_id)
        return {"token": text, "logprob": finite(logprob), "bytes": list(text.encode())}

    return [
        {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}
        for lp in lps
    ]


async def create_chat_completion(
    state: ServerState, body: ChatCompletionRequest, http: HTTPRequest
):
    state.admit(body.model, body.n)
    info = state.engine.info
    prompt_ids = render_messages(state, body.messages, body.add_generation_prompt)
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_param("top_logprobs", "top_logprobs requires logprobs to be true")
    max_tokens = (
        body.max_completion_tokens if body.max_completion_tokens is not None else (body.max_tokens)
    )
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    if max_tokens == 0:
        raise bad_param(param, f"{param} must be at least 1 for chat completions, got 0")
    if max_tokens is None:  # as OpenAI: up to the end of the context
        max_tokens = max(info.max_model_len - len(prompt_ids), 1)
    state.check_prompt(prompt_ids, max_tokens, "messages")
    num_logprobs = (body.top_logprobs or 0) if body.logprobs else None
    choices = []
    for i in range(body.n):
        seeded = (
            body.model_copy(update={"seed": body.seed + i}) if body.seed is not None and i else body
        )
        sampling = make_sampling(seeded, max_tokens, num_logprobs, None, info.vocab_size)
        choices.append(Choice(i, new_id("chatcmpl"), prompt_ids, None, sampling))
    rid, created, model = new_id("chatcmpl"), int(time.time()), body.model

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        started: set[int] = set()

        def chunk(index: int, text: str, event: TokenEvent, tracker: OutputTracker):
            out = tracker.output
            reason = out.finish_reason.value if out.is_finished else None
            delta: dict = {}
            if index not in started:
                started.add(index)
                delta["role"] = "assistant"
            if text or "role" in delta:
                delta["content"] = text
            lps = None
            if body.logprobs and event.logprobs:
                lps = {"content": _logprobs(state, list(event.logprobs))}
            if not (delta or reason or lps):
                return None
            choice = {"index": index, "delta": delta, "logprobs": lps, "finish_reason": reason}
            data = {"id": rid, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [choice]}  # fmt: skip
            if include_usage:
                data["usage"] = None
            return data

        def usage_chunk(trackers: list[OutputTracker]) -> dict:
            return {"id": rid, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [],
                    "usage": usage(len(prompt_ids), trackers)}  # fmt: skip

        return await stream(state, choices, chunk, usage_chunk if include_usage else None)

    trackers = await collect(state, choices, http)
    out_choices = []
    for c, tracker in zip(choices, trackers):
        out = tracker.output
        lps = {"content": _logprobs(state, out.logprobs)} if body.logprobs else None
        message = {"role": "assistant", "content": out.text}
        out_choices.append({"index": c.index, "message": message, "logprobs": lps,
                            "finish_reason": out.finish_reason.value})  # fmt: skip
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": out_choices, "usage": usage(len(prompt_ids), trackers)}  # fmt: skip
