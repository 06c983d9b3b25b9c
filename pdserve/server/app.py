"""The FastAPI app: routes, API-key check and body-size limit over one ServerState."""

from __future__ import annotations

import asyncio
import hmac

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from pdserve.server.chat import create_chat_completion, render_messages
from pdserve.server.completions import create_completion
from pdserve.server.errors import APIError, install_handlers
from pdserve.server.generation import ServerState
from pdserve.server.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)

STATUS_TIMEOUT_S = 1.0  # /metrics falls back to the last heartbeat after this


def build_app(state: ServerState, lifespan=None, enable_debug: bool = False) -> FastAPI:
    app = FastAPI(title="pdserve", version="0.1.0", lifespan=lifespan)
    app.state.server = state
    install_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=state.config.max_body_bytes)

    async def check_key(request: Request) -> None:  # a def would run in a thread per request
        key = state.config.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise APIError(401, "invalid API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")  # fmt: skip

    auth = [Depends(check_key)]

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionRequest, request: Request):
        return await create_completion(state, body, request)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await create_chat_completion(state, body, request)

    @app.get("/v1/models", dependencies=auth)
    async def models():
        state.require_ready()
        info = state.engine.info
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "pdserve",
                 "max_model_len": info.max_model_len} for name in state.model_names()]  # fmt: skip
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health():
        state.require_ready()
        return {"status": "ok", "instance": state.engine.info.instance_id}

    @app.get("/metrics")
    async def metrics():
        if state.engine.info is not None and state.engine.error is None:
            try:
                state.metrics.engine_status = await asyncio.wait_for(
                    state.engine.status(), STATUS_TIMEOUT_S
                )
            except Exception:  # a busy or dead engine: export what we last heard
                state.metrics.engine_status = getattr(state.engine, "last_status", None)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/tokenize", dependencies=auth)
    async def tokenize(body: TokenizeRequest):
        tokenizer = state.require_tokenizer()
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "send exactly one of prompt and messages", param="prompt")
        if body.messages is not None:
            ids = render_messages(state, body.messages, body.add_generation_prompt)
        else:
            ids = tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        max_len = state.engine.info.max_model_len if state.engine.info else None
        return {"tokens": ids, "count": len(ids), "max_model_len": max_len}

    @app.post("/detokenize", dependencies=auth)
    async def detokenize(body: DetokenizeRequest):
        tokenizer = state.require_tokenizer()
        vocab_size = state.engine.info.vocab_size if state.engine.info else None
        if vocab_size is not None and any(t >= vocab_size for t in body.tokens):
            raise APIError(400, f"token ids must be below {vocab_size}", param="tokens")
        return {"prompt": tokenizer.decode(body.tokens)}

    if enable_debug:

        @app.get("/debug/status", include_in_schema=False)
        async def debug_status():
            state.require_ready()
            status = await state.engine.status()
            return {"snapshot": _asdict(status.snapshot), "stats": _asdict(status.stats),
                    "kv_seq": status.kv_seq, "pid": state.engine.info.pid}  # fmt: skip

        @app.post("/debug/check_integrity", include_in_schema=False)
        async def debug_check_integrity():
            state.require_ready()
            try:
                await state.engine.check_integrity()
            except Exception as e:
                return JSONResponse({"ok": False, "error": str(e)}, status_code=500)
            return {"ok": True}

    return app


def _asdict(obj) -> dict:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


class BodyLimit:
    """413 for a request body over `max_bytes` (declared or streamed), before any parsing."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_large = APIError(413, f"the request body is over the limit of {self.max_bytes} bytes")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large.response()(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client gone before the body arrived
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await too_large.response()(scope, receive, send)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
