"""A scripted EngineClient: the server's error paths without a model or a process."""

from __future__ import annotations

import asyncio

from pdserve.engine.client import EngineDeadError
from pdserve.engine.protocol import EngineStats, WorkerInfo, WorkerStatus
from pdserve.server.app import build_app
from pdserve.server.generation import ServerConfig, ServerState
from pdserve.types import FinishReason, InstanceSnapshot, Request, TokenEvent

FAKE_MODEL = "fake"
INFO = WorkerInfo("fake-0", "inc-1", 0, FAKE_MODEL, 64, 16, 32, (), 100)


class FakeEngine:
    """Each request yields `num_tokens` tokens (id 7), or holds until `release` is set."""

    def __init__(self, num_tokens: int = 3, ready: bool = True):
        self.info = INFO if ready else None
        self.error: str | None = None
        self.num_tokens = num_tokens
        self.release = asyncio.Event()
        self.hold = False
        self.unstarted: set[str] = set()
        self.aborted: list[str] = []

    @property
    def num_unstarted(self) -> int:
        return len(self.unstarted)

    async def generate(self, req: Request):
        self.unstarted.add(req.request_id)
        done = False
        try:
            if self.hold:
                await self.release.wait()
            self.unstarted.discard(req.request_id)
            if self.error is not None:
                raise EngineDeadError(self.error)
            for i in range(self.num_tokens):
                last = i == self.num_tokens - 1
                reason = FinishReason.LENGTH if last else None
                done = last
                yield TokenEvent(req.request_id, (7,), reason, num_prompt_tokens=3)
        finally:
            self.unstarted.discard(req.request_id)
            if not done:
                self.aborted.append(req.request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def status(self) -> WorkerStatus:
        return WorkerStatus(InstanceSnapshot("fake-0"), EngineStats(), 0)

    async def check_integrity(self) -> None:
        return None

    async def close(self) -> None:
        return None


def fake_app(engine: FakeEngine, **config):
    state = ServerState(engine, None, ServerConfig(**config), is_ready=engine.info is not None)
    return build_app(state), state
