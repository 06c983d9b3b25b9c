"""EngineClient: what the HTTP server drives. `WorkerClient` runs one worker process over the
worker protocol (engine/protocol.py); the cluster controller implements the same protocol for a
fleet. Torch-free: the server's process never imports torch through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

import zmq
import zmq.asyncio

from pdserve.engine import protocol as P
from pdserve.types import Request, TokenEvent


class EngineDeadError(RuntimeError):
    """The engine (worker) is gone: the request cannot finish. Servers answer 5xx."""


class Overloaded(RuntimeError):
    """Admission refused the request: it is not expected to meet its SLO now. Servers answer
    429 with `Retry-After: retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestRejected(ValueError):
    """The engine refused the request: it can never run (e.g. too long). Servers answer 400."""


class EngineClient(Protocol):
    """The server's only view of the engine(s). Contract:

    - `generate(req)` submits `req` and yields its TokenEvents; the last one has a finish_reason.
      It raises RequestRejected before any event if the request can never run, and
      EngineDeadError (at any point) if the engine died. Closing the iterator early (client gone,
      stop string) aborts the request: its blocks are free within one engine step.
    - `info` is None until the engine is ready; `error` is set once it is dead for good.
    - `num_unstarted` counts submitted requests that have no event yet (admission control).
    """

    info: P.WorkerInfo | None
    error: str | None

    @property
    def num_unstarted(self) -> int: ...

    def generate(self, req: Request) -> AsyncIterator[TokenEvent]: ...

    async def abort(self, request_id: str) -> None: ...

    async def status(self) -> P.WorkerStatus: ...

    async def check_integrity(self) -> None: ...

    async def close(self) -> None: ...


class WorkerClient:
    """Spawns `python -m pdserve.engine.worker` and drives it over a ZMQ ROUTER socket."""

    def __init__(
        self,
        engine_argv: Sequence[str] = (),
        instance_id: str = "worker-0",
        heartbeat_s: float = 0.25,
        on_progress: Callable[[str], None] | None = None,
    ):
        self.engine_argv = list(engine_argv)
        self.instance_id = instance_id
        self.heartbeat_s = heartbeat_s
        self.on_progress = on_progress or (lambda stage: None)
        self.info: P.WorkerInfo | None = None
        self.error: str | None = None
        self.last_status: P.WorkerStatus | None = None
        self.proc: subprocess.Popen | None = None
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind("tcp://127.0.0.1:*")
        self.address = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._peer: bytes | None = None
        self._ready = asyncio.Event()
        self._queues: dict[str, asyncio.Queue] = {}
        self._unstarted: set[str] = set()
        self._calls: dict[int, asyncio.Future] = {}
        self._call_ids = itertools.count()
        self._tasks: list[asyncio.Task] = []

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the worker (returns at once; `wait_ready` waits for its REGISTER)."""
        cmd = [sys.executable, "-m", "pdserve.engine.worker", "--driver", self.address,
               "--instance-id", self.instance_id, "--parent-pid", str(os.getpid()),
               "--heartbeat-s", str(self.heartbeat_s), *self.engine_argv]  # fmt: skip
        self.proc = subprocess.Popen(cmd, start_new_session=True)  # Ctrl-C reaches only us
        self._tasks = [asyncio.create_task(self._recv_loop()), asyncio.create_task(self._watch())]

    async def wait_ready(self, timeout_s: float | None = None) -> P.WorkerInfo:
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait_for(ready, timeout_s)
        if self.info is None:
            raise EngineDeadError(self.error or "the worker stopped before it was ready")
        return self.info

    async def close(self, timeout_s: float = 5.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._send(P.SHUTDOWN)
            deadline = time.monotonic() + timeout_s
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._die("the engine was shut down")
        for task in self._tasks:
            task.cancel()
        self._sock.close()
        self._ctx.term()

    # ---- requests --------------------------------------------------------------------------

    @property
    def num_unstarted(self) -> int:
        return len(self._unstarted)

    async def generate(self, req: Request) -> AsyncIterator[TokenEvent]:
        if self.error is not None:
            raise EngineDeadError(self.error)
        rid = req.request_id
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[rid] = queue
        self._unstarted.add(rid)
        self._send(P.SUBMIT, P.encode_request(req))
        is_done = False
        try:
            while True:
                item = await queue.get()
                self._unstarted.discard(rid)
                if isinstance(item, Exception):
                    is_done = True
                    raise item
                is_done = item.is_finished
                yield item
                if is_done:
                    return
        finally:
            self._queues.pop(rid, None)
            self._unstarted.discard(rid)
            if not is_done:
                self._send(P.ABORT, [rid], "abort")

    async def abort(self, request_id: str) -> None:
        self._send(P.ABORT, [request_id], "abort")

    async def status(self) -> P.WorkerStatus:
        self.last_status = P.decode_status(await self.call("status"))
        return self.last_status

    async def check_integrity(self) -> None:
        await self.call("check_integrity")

    async def call(self, op: str, args: dict | None = None, timeout_s: float = 10.0):
        if self.error is not None:
            raise EngineDeadError(self.error)
        call_id = next(self._call_ids)
        future = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        self._send(P.CALL, call_id, op, args or {})
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._calls.pop(call_id, None)

    # ---- internals -------------------------------------------------------------------------

    def _send(self, msg_type: str, *body) -> None:
        if self._peer is None or self._sock.closed:
            return
        # A ROUTER send never blocks (the future it returns is already done); a gone peer
        # raises, and the watcher reports the death.
        with contextlib.suppress(zmq.ZMQError):
            self._sock.send_multipart([self._peer, P.pack(msg_type, *body)])

    async def _recv_loop(self) -> None:
        while True:
            peer, frame = await self._sock.recv_multipart()
            msg_type, body = P.unpack(frame)
            if msg_type == P.TOKENS:
                for data in body[0]:
                    queue = self._queues.get(data[0])
                    if queue is not None:
                        queue.put_nowait(P.decode_event(data))
            elif msg_type == P.HEARTBEAT:
                self.last_status = P.decode_status(body[0])
                self._last_heard = time.monotonic()
            elif msg_type == P.REPLY:
                call_id, ok, value = body
                future = self._calls.get(call_id)
                if future is not None and not future.done():
                    future.set_result(value) if ok else future.set_exception(RuntimeError(value))
            elif msg_type == P.REJECT:
                queue = self._queues.get(body[0])
                if queue is not None:
                    queue.put_nowait(RequestRejected(body[1]))
            elif msg_type == P.PROGRESS:
                self._peer = peer
                self.on_progress(body[1])
            elif msg_type == P.REGISTER:
                self._peer = peer
                self.info = P.decode_info(body[0])
                self._last_heard = time.monotonic()
                self._ready.set()
            elif msg_type == P.FAILED:
                self._die(f"the worker failed to start: {body[1]}")

    async def _watch(self) -> None:
        """A worker process that exits, for any reason, fails everything in flight."""
        while self.proc is not None:
            code = self.proc.poll()
            if code is not None:
                self._die(f"the engine worker exited (code {code})")
                return
            await asyncio.sleep(0.1)

    def _die(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
        for queue in self._queues.values():
            queue.put_nowait(EngineDeadError(self.error))
        for future in self._calls.values():
            if not future.done():
                future.set_exception(EngineDeadError(self.error))
        self._ready.set()
