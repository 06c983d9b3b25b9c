"""A small fake OpenAI streaming server on 127.0.0.1 (random port), in its own thread and loop.

Modes:
    ok             stream max_tokens chunks (one token each): the first after first_delay_s, the
                   rest every token_delay_s; then a usage chunk and [DONE]
    500, 429       answer every request with that status
    drop           stream 2 tokens, then close the connection mid-stream
    every-3rd-500  like ok, but every third request gets a 500
    text-only      400 for token-id prompts, ok for text
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

import pytest
from aiohttp import web


@dataclass
class FakeServer:
    mode: str = "ok"
    first_delay_s: float = 0.05
    token_delay_s: float = 0.01
    prompts: list = field(default_factory=list)  # the `prompt` (or messages) of every request
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = body.get("prompt", body.get("messages"))
        self.prompts.append(prompt)
        n = len(self.prompts)
        if self.mode in ("500", "429") or (self.mode == "every-3rd-500" and n % 3 == 0):
            status = 429 if self.mode == "429" else 500
            return web.json_response({"error": {"message": "fake failure"}}, status=status)
        if self.mode == "text-only" and isinstance(prompt, list):
            return web.json_response({"error": {"message": "prompt must be a string"}}, status=400)
        is_chat = "messages" in body
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        num_tokens = body["max_tokens"]
        await asyncio.sleep(self.first_delay_s)
        if self.mode == "one-closing-chunk":  # every token in the closing chunk, no text
            choice = {"index": 0, "finish_reason": "length", "text": ""}
            await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
            num_tokens = 0
        for i in range(num_tokens):
            if i > 0:
                await asyncio.sleep(self.token_delay_s)
            if self.mode == "drop" and i == 2:
                request.transport.close()
                return resp
            last = i == num_tokens - 1
            choice = {"index": 0, "finish_reason": "length" if last else None}
            choice.update({"delta": {"content": " tok"}} if is_chat else {"text": " tok"})
            await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        plen = len(prompt) if isinstance(prompt, list) and not is_chat else 7
        usage = {"prompt_tokens": plen, "completion_tokens": body["max_tokens"]}
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _serve(server: FakeServer, ready: threading.Event, stop: list) -> None:
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/completions", server._handle)
    app.router.add_post("/v1/chat/completions", server._handle)
    runner = web.AppRunner(app, handler_cancellation=True)  # a client gone ends its handler
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    server.port = site._server.sockets[0].getsockname()[1]
    done = loop.create_future()
    stop.append((loop, done))
    ready.set()
    loop.run_until_complete(done)
    loop.run_until_complete(runner.cleanup())
    loop.close()


@pytest.fixture
def fake_server():
    """Factory: fake_server(mode=..., first_delay_s=..., token_delay_s=...) -> a running server."""
    started = []

    def start(**kwargs) -> FakeServer:
        server = FakeServer(**kwargs)
        ready, stop = threading.Event(), []
        thread = threading.Thread(target=_serve, args=(server, ready, stop), daemon=True)
        thread.start()
        assert ready.wait(10), "fake server did not start"
        started.append((thread, stop))
        return server

    yield start
    for thread, stop in started:
        loop, done = stop[0]
        loop.call_soon_threadsafe(done.set_result, None)
        thread.join(10)
