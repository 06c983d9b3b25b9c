"""Async load generator against any OpenAI-compatible server, streaming, one timeline per request.

Each request is sent at its arrival offset (after the previous turn of its session has finished,
for multi-turn workloads, and when a `max_concurrency` slot is free), streams with
`stream_options.include_usage`, and records the arrival of every chunk that carries output. Output
tokens are counted from `usage.completion_tokens` when the server reports it, else one per chunk.
Errors never escape: HTTP 4xx/5xx, timeouts, dropped connections and streams that end without
`[DONE]` become failed timelines with their error message.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from tqdm.asyncio import tqdm

from pdserve.bench.text import ids_to_text
from pdserve.bench.workload import BenchRequest
from pdserve.metrics import RequestTimeline

PROMPT_FORMATS = ("auto", "tokens", "text")


@dataclass(frozen=True, slots=True)
class ClientConfig:
    base_url: str  # e.g. http://127.0.0.1:8000
    model: str
    endpoint: str = "/v1/completions"  # or /v1/chat/completions
    # tokens: `prompt` is a list of ids; text: ids_to_text; auto: tokens on /v1/completions unless
    # the server refuses the first request with 400/422, then text (chat is always text)
    prompt_format: str = "auto"
    max_concurrency: int | None = None
    request_timeout_s: float = 600.0
    temperature: float = 0.0
    api_key: str | None = None
    show_progress: bool = True

    @property
    def is_chat(self) -> bool:
        return self.endpoint.rstrip("/").endswith("chat/completions")


@dataclass(slots=True)
class RunResult:
    timelines: list[RequestTimeline]  # in workload order; times in seconds from the run's start
    duration_s: float  # run start to the last response's end
    prompt_format: str  # the format actually used


class _HttpError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


class LoadGenerator:
    """One run of a workload against one server. Use `await run(requests)` once."""

    def __init__(self, config: ClientConfig):
        if config.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}")
        self.config = config
        self.url = config.base_url.rstrip("/") + config.endpoint
        fmt = "text" if config.is_chat else config.prompt_format
        self.prompt_format = fmt
        self._format_known = asyncio.Event()
        self._probing = False
        if fmt != "auto":
            self._format_known.set()

    def _payload(self, req: BenchRequest, fmt: str) -> dict:
        cfg = self.config
        body: dict = {
            "model": cfg.model,
            "max_tokens": req.output_len,
            "temperature": cfg.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": req.ignore_eos,  # vLLM/pdserve/llama.cpp extension; others ignore it
        }
        text = req.prompt_text if req.prompt_text is not None else None
        if cfg.is_chat:
            text = text or ids_to_text(req.prompt_token_ids)
            body["messages"] = [{"role": "user", "content": text}]
        elif fmt == "tokens" and req.prompt_text is None:
            body["prompt"] = list(req.prompt_token_ids)
        else:
            body["prompt"] = text or ids_to_text(req.prompt_token_ids)
        return body

    async def _stream(
        self, session: aiohttp.ClientSession, req: BenchRequest, fmt: str, tl: RequestTimeline
    ) -> None:
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        async with session.post(self.url, json=self._payload(req, fmt), headers=headers) as resp:
            if resp.status != 200:
                raise _HttpError(resp.status, await resp.text())
            num_chunks, usage_tokens, is_done = 0, None, False
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    is_done = True
                    break
                now = time.perf_counter() - self._t0
                chunk = json.loads(data)
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"].get("completion_tokens", usage_tokens)
                    tl.prompt_len = chunk["usage"].get("prompt_tokens", tl.prompt_len)
                for choice in chunk.get("choices") or ():
                    piece = choice.get("text")
                    if piece is None:
                        piece = (choice.get("delta") or {}).get("content") or ""
                    # A chunk carries tokens unless it is the bare closing one; a closing
                    # chunk that comes first carried the request's first (and only) tokens.
                    if piece or choice.get("finish_reason") is None or not tl.token_times_s:
                        tl.token_times_s.append(now)
                        num_chunks += 1
                    break  # one choice per request (n = 1)
            tl.end_s = time.perf_counter() - self._t0
            if not is_done:
                raise ConnectionError("stream ended before [DONE]")
            tl.num_output_tokens = usage_tokens if usage_tokens is not None else num_chunks
            if tl.num_output_tokens == 0 or not tl.token_times_s:
                raise ValueError("no output tokens")
            tl.is_success = True

    async def _send(self, session: aiohttp.ClientSession, req: BenchRequest) -> RequestTimeline:
        if not self._format_known.is_set():
            if self._probing:
                await self._format_known.wait()
            else:
                self._probing = True  # this request decides the prompt format for all
        fmt = "tokens" if self.prompt_format == "auto" else self.prompt_format
        while True:
            tl = RequestTimeline(send_s=time.perf_counter() - self._t0, prompt_len=req.prompt_len)
            try:
                await self._stream(session, req, fmt, tl)
            except _HttpError as e:
                if not self._format_known.is_set() and e.status in (400, 422) and fmt == "tokens":
                    fmt = self.prompt_format = "text"
                    continue  # the server wants text prompts: retry this request as text
                tl.error = str(e)
            except TimeoutError:
                tl.error = f"timeout after {self.config.request_timeout_s:g}s"
            except Exception as e:  # dropped connections, bad JSON, anything: a failed request
                tl.error = f"{type(e).__name__}: {e}"[:300]
            break
        if not self._format_known.is_set():
            if self.prompt_format == "auto":
                self.prompt_format = "tokens"
            self._format_known.set()
        if tl.end_s is None:
            tl.end_s = time.perf_counter() - self._t0
        return tl

    async def run(self, requests: Sequence[BenchRequest]) -> RunResult:
        cfg = self.config
        slots = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
        turn_done = {
            (r.session_id, r.turn): asyncio.Event() for r in requests if r.session_id is not None
        }
        bar = tqdm(total=len(requests), disable=not cfg.show_progress, desc="requests")
        timeout = aiohttp.ClientTimeout(total=cfg.request_timeout_s)
        connector = aiohttp.TCPConnector(limit=0)  # concurrency is ours to limit, not the pool's
        self._t0 = time.perf_counter()

        async def one(req: BenchRequest) -> RequestTimeline:
            delay = req.arrival_s - (time.perf_counter() - self._t0)
            if delay > 0:
                await asyncio.sleep(delay)
            if req.session_id is not None and req.turn > 0:
                prev = turn_done.get((req.session_id, req.turn - 1))
                if prev is not None:
                    await prev.wait()
            try:
                if slots is None:
                    tl = await self._send(session, req)
                else:
                    async with slots:
                        tl = await self._send(session, req)
            finally:
                if req.session_id is not None:
                    turn_done[(req.session_id, req.turn)].set()
                bar.update(1)
            tl.scheduled_s = req.arrival_s
            return tl

        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            timelines = await asyncio.gather(*(one(r) for r in requests))
        bar.close()
        ends = [tl.end_s for tl in timelines if tl.end_s is not None]
        duration = max(ends, default=0.0) or 1e-9
        fmt = self.prompt_format if self.prompt_format != "auto" else "tokens"
        return RunResult(list(timelines), duration, fmt)


def run_load(requests: Sequence[BenchRequest], config: ClientConfig) -> RunResult:
    """Synchronous entry: run the workload against the server, return every request's timeline."""
    return asyncio.run(LoadGenerator(config).run(requests))
