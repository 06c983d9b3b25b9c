"""POST /v1/completions: text or token-id prompts, n choices each, echo with prompt logprobs."""

from __future__ import annotations

import time

from fastapi import Request as HTTPRequest

from pdserve.engine.output import OutputTracker
from pdserve.server.generation import ServerState, make_sampling, new_id
from pdserve.server.responses import Choice, collect, finite, stream, usage
from pdserve.server.schemas import CompletionRequest
from pdserve.types import Logprob, TokenEvent

DEFAULT_MAX_TOKENS = 16  # as OpenAI's legacy completions


def _prompts(state: ServerState, prompt) -> list[tuple[str | None, list[int]]]:
    """(text or None, token ids) for each prompt of the request."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        return [(None, [])]
    out = []
    for p in prompt:
        if isinstance(p, str):
            out.append((p, state.require_tokenizer().encode(p)))
        else:
            out.append((None, list(p)))
    return out


def _logprobs(state: ServerState, lps: list[Logprob | None], ids: list[int], offset: int) -> dict:
    """OpenAI's completions logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens = [state.token_text(t) for t in ids]
    offsets, at = [], offset
    for text in tokens:
        offsets.append(at)
        at += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [None if lp is None else finite(lp.logprob) for lp in lps],
        "top_logprobs": [
            None if lp is None else {state.token_text(t): finite(v) for t, v in lp.top}
            for lp in lps
        ],
        "text_offset": offsets,
    }


async def create_completion(state: ServerState, body: CompletionRequest, http: HTTPRequest):
    state.require_ready()
    prompts = _prompts(state, body.prompt)
    state.admit(body.model, len(prompts) * body.n)
    info = state.engine.info
    max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    echo_logprobs = body.logprobs if body.echo and body.logprobs is not None else None
    choices = []
    for p, (text, ids) in enumerate(prompts):
        state.check_prompt(ids, max_tokens, "prompt")
        if body.echo and text is None and state.tokenizer is not None:
            text = state.tokenizer.decode(ids)
        for i in range(body.n):
            seeded = (
                body.model_copy(update={"seed": body.seed + i})
                if body.seed is not None and i
                else body
            )
            sampling = make_sampling(seeded, max_tokens, body.logprobs, echo_logprobs,
                                     info.vocab_size)  # fmt: skip
            choices.append(Choice(p * body.n + i, new_id("cmpl"), ids, text, sampling))
    rid, created, model = new_id("cmpl"), int(time.time()), body.model
    num_prompt_tokens = sum(len(ids) for _, ids in prompts)

    def echo_prefix(c: Choice, tracker: OutputTracker) -> tuple[str, dict | None]:
        """The prompt's text and logprobs, put in front of a choice's output when echo is on."""
        if not body.echo:
            return "", None
        lps = tracker.output.prompt_logprobs
        if body.logprobs is None or lps is None:
            return c.prompt_text or "", None
        return c.prompt_text or "", _logprobs(state, lps, c.prompt_ids, 0)

    def choice_logprobs(c: Choice, lps: list, ids: list[int], offset: int, prefix: dict | None):
        if body.logprobs is None:
            return None
        out = _logprobs(state, lps, ids, offset)
        if prefix is not None:
            out = {k: prefix[k] + out[k] for k in out}
        return out

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        started: set[int] = set()

        def chunk(index: int, text: str, event: TokenEvent, tracker: OutputTracker):
            c = choices[index]
            prefix_text, prefix_lps = "", None
            if index not in started:
                started.add(index)
                prefix_text, prefix_lps = echo_prefix(c, tracker)
            out = tracker.output
            reason = out.finish_reason.value if out.is_finished else None
            n_new = len(event.new_token_ids)
            new_lps = out.logprobs[len(out.logprobs) - len(event.logprobs) :]
            offset = len(prefix_text) + len(out.text) - len(text)
            lps = choice_logprobs(c, new_lps, out.token_ids[len(out.token_ids) - n_new :],
                                  offset, prefix_lps)  # fmt: skip
            # A model without a tokenizer has no text: each token still gets its (empty) chunk,
            # so that clients see when tokens arrive.
            tokens_only = state.tokenizer is None and n_new > 0
            if not (prefix_text or text or reason or lps or tokens_only):
                return None
            choice = {"index": index, "text": prefix_text + text, "logprobs": lps,
                      "finish_reason": reason}  # fmt: skip
            data = {"id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [choice]}  # fmt: skip
            if include_usage:
                data["usage"] = None
            return data

        def usage_chunk(trackers: list[OutputTracker]) -> dict:
            return {"id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [], "usage": usage(num_prompt_tokens, trackers)}  # fmt: skip

        return await stream(state, choices, chunk, usage_chunk if include_usage else None)

    trackers = await collect(state, choices, http)
    out_choices = []
    for c, tracker in zip(choices, trackers):
        out = tracker.output
        prefix_text, prefix_lps = echo_prefix(c, tracker)
        lps = choice_logprobs(c, out.logprobs, out.token_ids, len(prefix_text), prefix_lps)
        out_choices.append({"index": c.index, "text": prefix_text + out.text, "logprobs": lps,
                            "finish_reason": out.finish_reason.value})  # fmt: skip
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": out_choices, "usage": usage(num_prompt_tokens, trackers)}  # fmt: skip
