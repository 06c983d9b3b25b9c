"""Running a request's choices to a response: SSE streaming or one JSON body, with the engine's
failures mapped to HTTP errors and a client disconnect turned into an abort."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Request as HTTPRequest
from fastapi.responses import StreamingResponse

from pdserve.engine.client import EngineDeadError, Overloaded, RequestRejected
from pdserve.engine.output import OutputTracker
from pdserve.server.errors import APIError
from pdserve.server.generation import ServerState, merge, run_choice
from pdserve.types import SamplingParams, TokenEvent

LOGPROB_FLOOR = -9999.0  # JSON has no -inf
DISCONNECT_POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    request_id: str
    prompt_ids: list[int]
    prompt_text: str | None
    sampling: SamplingParams


# (choice index, new text, event, tracker) -> one chunk's JSON, or None to send nothing
ChunkFn = Callable[[int, str, TokenEvent, OutputTracker], dict | None]


def finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else LOGPROB_FLOOR


def usage(num_prompt_tokens: int, trackers: list[OutputTracker]) -> dict:
    num_completion = sum(len(t.output.token_ids) for t in trackers)
    num_cached = sum(t.output.num_cached_tokens for t in trackers)
    return {
        "prompt_tokens": num_prompt_tokens,
        "completion_tokens": num_completion,
        "total_tokens": num_prompt_tokens + num_completion,
        "prompt_tokens_details": {"cached_tokens": num_cached},
    }


def sse(data: dict | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


def engine_error(exc: Exception) -> APIError:
    if isinstance(exc, RequestRejected):
        return APIError(400, str(exc), code="invalid_request")
    if isinstance(exc, EngineDeadError):
        return APIError(503, f"the engine failed: {exc}", code="engine_dead")
    if isinstance(exc, Overloaded):
        return APIError(
            429, str(exc), code="overloaded", headers={"Retry-After": str(exc.retry_after_s)}
        )
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}")


def _streams(state: ServerState, choices: list[Choice]) -> list[AsyncIterator]:
    arrival_s = time.monotonic()
    return [
        run_choice(state, c.request_id, c.prompt_ids, c.prompt_text, c.sampling, arrival_s)
        for c in choices
    ]


async def collect(
    state: ServerState, choices: list[Choice], http: HTTPRequest
) -> list[OutputTracker]:
    """Run every choice to the end; trackers in choice order. A client that goes away aborts."""
    trackers: dict[int, OutputTracker] = {}

    async def run() -> None:
        async for i, (_, _, tracker) in merge(_streams(state, choices)):
            trackers[i] = tracker

    task = asyncio.create_task(run())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and await http.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise APIError(499, "the client closed the request")
        exc = task.exception()
    finally:
        if not task.done():
            task.cancel()
    if exc is not None:
        raise engine_error(exc)
    return [trackers[i] for i in range(len(choices))]


async def stream(
    state: ServerState,
    choices: list[Choice],
    chunk: ChunkFn,
    usage_chunk: Callable[[list[OutputTracker]], dict] | None,
) -> StreamingResponse:
    """SSE: one chunk per engine event and choice, the usage chunk if asked, then [DONE].
    The first event is awaited before the status line goes out, so a request the engine refuses
    (400), cannot admit (429) or cannot run (503) gets a real status. Starlette cancels the
    generator when the client disconnects; that aborts every choice."""
    merged = merge(_streams(state, choices))
    try:
        first = await anext(merged)
    except StopAsyncIteration:
        first = None
    except Exception as e:
        raise engine_error(e) from e

    async def rest():
        if first is not None:
            yield first
            async for item in merged:
                yield item

    async def events() -> AsyncIterator[str]:
        trackers: dict[int, OutputTracker] = {}
        try:
            async for i, (text, event, tracker) in rest():
                trackers[i] = tracker
                data = chunk(choices[i].index, text, event, tracker)
                if data is not None:
                    yield sse(data)
            if usage_chunk is not None:
                yield sse(usage_chunk([trackers[i] for i in sorted(trackers)]))
        except Exception as e:  # the status line is gone: report in the stream
            yield sse(engine_error(e).body())
        yield sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})  # fmt: skip
