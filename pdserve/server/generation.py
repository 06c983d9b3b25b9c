"""What every generation endpoint shares: admission, sampling params, context checks, and the
per-choice stream (engine events -> text with stop strings -> metrics), merged over n choices."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from pdserve.engine.client import EngineClient
from pdserve.engine.output import OutputTracker, RequestOutput
from pdserve.server.errors import APIError, bad_param
from pdserve.server.prom import ServerMetrics
from pdserve.types import Request, SamplingParams, TokenEvent

GREEDY_BELOW = 1e-5  # temperatures this small sample greedily (dividing by them overflows)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    served_model_name: str | None = None  # None: derived from the engine's model
    api_key: str | None = None
    max_body_bytes: int = 8 * 2**20
    max_waiting: int = 1024  # requests submitted without a first token; more -> 429
    retry_after_s: int = 1


@dataclass(slots=True)
class ServerState:
    engine: EngineClient
    tokenizer: object | None  # pdserve.model.tokenizer.Tokenizer; None: token ids only
    config: ServerConfig
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    is_ready: bool = False  # set once the engine registered and the tokenizer is loaded
    _token_texts: dict[int, str] = field(default_factory=dict)

    def token_text(self, token_id: int) -> str:
        """One token as text, for logprobs (\ufffd where it is part of a multi-byte character)."""
        text = self._token_texts.get(token_id)
        if text is None:
            tokenizer = self.tokenizer
            text = tokenizer.decode([token_id], False) if tokenizer else f"<{token_id}>"
            self._token_texts[token_id] = text
        return text

    def model_names(self) -> list[str]:
        info = self.engine.info
        if self.config.served_model_name:
            return [self.config.served_model_name]
        if info is None:
            return []
        name = info.model.rsplit("/", 1)[-1].removesuffix(".gguf") or "default"
        return [name] if name == info.model else [name, info.model]

    def require_ready(self) -> None:
        if self.engine.error is not None:
            raise APIError(503, f"the engine is not available: {self.engine.error}")
        if not self.is_ready or self.engine.info is None:
            raise APIError(503, "the engine is still loading; retry shortly",
                           headers={"Retry-After": str(self.config.retry_after_s)})  # fmt: skip

    def admit(self, model: str, num_new: int) -> None:
        """503 if not ready, 404 for another model, 429 if the waiting queue is over its bound."""
        self.require_ready()
        if model not in self.model_names():
            raise APIError(404, f"the model {model!r} does not exist; this server serves "
                           f"{', '.join(self.model_names())}", param="model",
                           code="model_not_found")  # fmt: skip
        waiting = self.engine.num_unstarted
        if waiting + num_new > self.config.max_waiting:
            raise APIError(429, f"too many requests waiting ({waiting} + {num_new} new, bound "
                           f"{self.config.max_waiting}); retry later",
                           headers={"Retry-After": str(self.config.retry_after_s)})  # fmt: skip

    def require_tokenizer(self):
        if self.tokenizer is None:
            raise bad_param("prompt", "this model has no tokenizer: send token ids, not text")
        return self.tokenizer

    def check_prompt(self, prompt_ids: Sequence[int], max_tokens: int, param: str) -> None:
        info = self.engine.info
        if not prompt_ids:
            raise bad_param(param, "the prompt must contain at least one token")
        if max(prompt_ids) >= info.vocab_size:
            raise bad_param(param, f"token ids must be below the vocabulary size {info.vocab_size}")
        limit = info.max_model_len
        if len(prompt_ids) + max_tokens > limit:
            raise bad_param(
                "max_tokens",
                f"this model's maximum context length is {limit} tokens, "
                f"but you requested {len(prompt_ids) + max_tokens} tokens "
                f"({len(prompt_ids)} in the prompt, {max_tokens} for the completion)",
            )


def make_sampling(body, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None,
                  vocab_size: int) -> SamplingParams:  # fmt: skip
    temperature = 1.0 if body.temperature is None else body.temperature
    stop = body.stop if isinstance(body.stop, list) else [body.stop] if body.stop else []
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0 if temperature < GREEDY_BELOW else temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=min(body.top_k or 0, vocab_size),
            min_p=body.min_p or 0.0, seed=body.seed,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            repetition_penalty=body.repetition_penalty or 1.0,
            stop=tuple(stop), stop_token_ids=tuple(body.stop_token_ids or ()),
            ignore_eos=body.ignore_eos, min_tokens=body.min_tokens,
            logprobs=logprobs, prompt_logprobs=prompt_logprobs,
        )  # fmt: skip
    except ValueError as e:
        raise bad_param(str(e).split()[0], str(e)) from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


async def run_choice(
    state: ServerState, request_id: str, prompt_ids: list[int], prompt_text: str | None,
    sampling: SamplingParams, arrival_s: float,
) -> AsyncIterator[tuple[str, TokenEvent, OutputTracker]]:  # fmt: skip
    """Yield (new text, event, tracker) for one engine request until it finishes. A stop string
    ends it here; leaving the loop closes the engine stream, which aborts the request."""
    detok = None
    if state.tokenizer is not None:
        from pdserve.model.detokenizer import IncrementalDetokenizer

        detok = IncrementalDetokenizer(state.tokenizer, prompt_token_ids=prompt_ids)
    output = RequestOutput(request_id, prompt_text, list(prompt_ids), arrival_s=arrival_s)
    tracker = OutputTracker(output, sampling, detok)
    eos = getattr(state.tokenizer, "eos_token_ids", ()) or state.engine.info.eos_token_ids
    req = Request(request_id, tuple(prompt_ids), sampling, arrival_s, eos_token_ids=tuple(eos))
    stream = state.engine.generate(req)
    try:
        async for event in stream:
            text = tracker.add(event, time.monotonic())
            yield text, event, tracker
            if output.is_finished:
                break
    finally:
        await stream.aclose()
        if output.is_finished:
            state.metrics.observe_finished(output)


async def merge(streams: Sequence[AsyncIterator]) -> AsyncIterator[tuple[int, object]]:
    """Interleave several async iterators as items arrive: (stream index, item). A stream is
    not read past an item until the consumer is done with it (asks for the next item): its
    items share a tracker that reading the next event advances. Closing the merged iterator
    cancels (and so closes) every stream still running."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()
    loop = asyncio.get_running_loop()

    async def pump(index: int, stream: AsyncIterator) -> None:
        try:
            async for item in stream:
                taken = loop.create_future()
                queue.put_nowait((index, item, taken))
                await taken
        except Exception as e:  # handed to the consumer
            queue.put_nowait((index, e, None))
        finally:
            queue.put_nowait((index, done, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        num_open = len(tasks)
        while num_open:
            index, item, taken = await queue.get()
            if item is done:
                num_open -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
                taken.set_result(None)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
