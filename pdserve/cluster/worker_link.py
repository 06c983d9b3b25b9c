"""The controller's side of the worker protocol (engine/protocol.py): messages in from the
workers (registration, heartbeats, KV events, tokens, rejections, call replies), messages out,
and liveness. Routing and dispatch stay in controller.py; this half keeps the fleet's view
(registry, prefix index) current and hands each request's events to its flight.

    workers ── REGISTER HEARTBEAT KV TOKENS REJECT REPLY ──> _drain -> _handle
    workers <── SUBMIT ABORT CALL SHUTDOWN KV_SEND KV_RECEIVED ── _send

A mixin of `Controller`: the state it reads and writes is the controller's (`config`, `metrics`,
`registry`, `index`, `pending`, `pd`, `_sock`, `_loop`, `_flights`, `_calls`, `_call_ids`,
`_info`, `_changed`, `_is_drain_due`, `_packer`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import msgpack
import zmq

from pdserve.cluster import kv_sync
from pdserve.cluster.registry import InstanceRecord
from pdserve.engine import protocol as P
from pdserve.engine.client import EngineDeadError, RequestRejected
from pdserve.types import Request, TokenEvent

if TYPE_CHECKING:
    from pdserve.cluster.controller import _Flight

log = logging.getLogger("pdserve.cluster.controller")  # one logger for both halves
MONITOR_PERIOD_S = 0.1
MAX_DRAIN = 256  # messages handled per wake-up before the loop runs other callbacks
_SNDMORE_NOBLOCK = zmq.SNDMORE | zmq.NOBLOCK


def make_packer() -> msgpack.Packer:
    """A Packer giving `engine.protocol.pack`'s bytes; one per controller (not thread-safe)."""
    return msgpack.Packer(use_bin_type=True)


_PLACEHOLDER = 0x90  # msgpack's empty array


def pack_submit(
    packer: msgpack.Packer,
    req: Request,
    block_hashes: list[int],
    packed_blocks: bytes,
    block_size: int,
) -> bytes:
    """The bytes of `P.pack(P.SUBMIT, P.encode_request(req, block_hashes))`, with the prompt's
    full blocks taken from `packed_blocks` (`BlockHasher.hash_and_pack` at `block_size`)
    instead of packed int by int:

        [SUBMIT, [[request_id, <prompt>, sampling, ...]]]
                               └ array header + packed_blocks + the tail's ints
    """
    body = P.encode_request(req, block_hashes)
    tokens = req.prompt_token_ids
    if body[1] is not tokens:  # not the layout spliced into here
        return packer.pack([P.SUBMIT, [body]])
    body[1] = ()  # one byte, right after the request id
    frame = packer.pack([P.SUBMIT, [body]])
    header, item = packer.pack_array_header, packer.pack
    at = len(header(2)) + len(item(P.SUBMIT)) + len(header(1)) + len(header(len(body)))
    at += len(item(body[0]))
    tail = tokens[len(tokens) - len(tokens) % block_size :]
    if frame[at] != _PLACEHOLDER:
        body[1] = tokens
        return packer.pack([P.SUBMIT, [body]])
    packed_tail = item(tail)[len(header(len(tail))) :]
    return b"".join((frame[:at], header(len(tokens)), packed_blocks, packed_tail, frame[at + 1 :]))


class _InstanceLost(Exception):
    pass


class WorkerLink:
    """Messages in and out, call replies and liveness over the controller's ROUTER socket."""

    async def call(
        self, instance_id: str, op: str, args: dict | None = None, timeout_s: float = 10.0
    ):
        record = self.registry.get(instance_id)
        if record is None:
            raise EngineDeadError(f"no live instance {instance_id!r}")
        call_id = next(self._call_ids)
        future = asyncio.get_running_loop().create_future()
        self._calls[call_id] = (future, record.peer)
        self._send(record, P.CALL, call_id, op, args or {})
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._calls.pop(call_id, None)

    def mark_dead(self, instance_id: str, reason: str) -> None:
        """Take an instance out of rotation now (e.g. its launcher saw the process exit)."""
        record = self.registry.get(instance_id)
        if record is not None:
            self._remove(record, reason)

    def _drain(self) -> None:
        """Handle the frames waiting on the socket. Its FD signals edge-triggered (and a send
        may consume the edge), so read while ZMQ_EVENTS shows POLLIN (cheaper than a recv
        raising Again), and after every send `_wake` if it does."""
        self._is_drain_due = False
        sock, handle = self._sock, self._handle
        recv, more, flags = sock.recv, sock.getsockopt, zmq.NOBLOCK
        for _ in range(MAX_DRAIN):
            # [peer, frame]: two recv calls, not recv_multipart's list and RCVMORE per frame
            try:
                if not more(zmq.EVENTS) & zmq.POLLIN:
                    return
                peer = recv(flags)
                frame = recv(flags)
            except zmq.Again:
                return
            except zmq.ZMQError:  # closed
                return
            if more(zmq.RCVMORE):  # a worker sends one frame per message
                while more(zmq.RCVMORE):
                    recv(flags)
                log.error("controller: multi-frame message from %r dropped", peer)
                continue
            try:
                handle(peer, *P.unpack(frame))
            except Exception:  # a malformed frame must not stop the fleet
                log.exception("controller: bad message from %r", peer)
        self._wake()  # more may wait: let other callbacks run first

    def _wake(self) -> None:
        """Schedule one `_drain` (sends after `close`, e.g. from a generator's cleanup, have
        nothing to read and may find the loop closed)."""
        if not self._is_drain_due and self._loop is not None and not self._sock.closed:
            self._is_drain_due = True
            self._loop.call_soon(self._drain)

    def _handle(self, peer: bytes, msg_type: str, body: tuple) -> None:
        now = time.monotonic()
        if msg_type == P.REGISTER:
            self._register(peer, body, now)
            return
        record = self.registry.by_peer(peer)
        if record is None:  # not registered, refused, or already taken out of rotation
            if msg_type == P.FAILED:
                log.warning("controller: worker %r failed to start: %s", peer, body[-1])
                instance_id = peer.decode(errors="replace").split("/", 1)[0]
                self.start_failures[instance_id] = str(body[-1])
                self._changed.set()
            return
        record.last_heard_s = now  # any message is a sign of life
        if msg_type == P.TOKENS:
            for data in body[0]:
                flight = self._flights.get(data[0])
                if flight is not None:
                    event = P.decode_event(data)
                    if not flight.has_started:
                        self._started(record, flight, event, now)
                    flight.queue.put_nowait(event)
        elif msg_type == P.KV:
            events = [P.decode_kv_event(e) for e in body[1]]
            if not kv_sync.apply_kv(self.index, record, body[0], events):
                asyncio.create_task(self._replay(record))
        elif msg_type == P.HEARTBEAT:
            status = P.decode_status(body[0])
            self.registry.heard(record, status, now)
            if kv_sync.is_behind(record, status.kv_seq):
                asyncio.create_task(self._replay(record))
        elif msg_type == P.REPLY:
            call_id, ok, value = body
            future, _ = self._calls.get(call_id, (None, None))
            if future is not None and not future.done():
                future.set_result(value) if ok else future.set_exception(RuntimeError(value))
        elif msg_type == P.REJECT:
            flight = self._flights.get(body[0])
            if flight is not None:
                flight.queue.put_nowait(RequestRejected(body[1]))
        elif msg_type in (P.KV_RESERVED, P.KV_SENT):
            self.pd.on_message(msg_type, body)

    def _register(self, peer: bytes, body: tuple, now: float) -> None:
        info = P.decode_info(body[0])
        token = body[1] if len(body) > 1 else None
        if not self.registry.is_authorized(token):
            log.warning(
                "controller: refused %s/%s: wrong control token", info.instance_id, info.incarnation
            )
            return
        record, old = self.registry.register(peer, info, now)
        if old is not None:
            self._remove(old, f"restarted as incarnation {info.incarnation}")
        self._info = None
        self._changed.set()
        log.info("controller: instance %s/%s joined", info.instance_id, info.incarnation)

    def _started(self, record, flight: _Flight, event: TokenEvent, now: float) -> None:
        flight.has_started = True
        record.started(event.request_id)
        self.pending.remove(flight.instance_id, flight.block_hashes)
        flight.block_hashes = []
        self.metrics.observe_first_event(
            flight.instance_id, now - flight.dispatched_s, event.num_cached_tokens
        )

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(MONITOR_PERIOD_S)
            for record in self.registry.expired(time.monotonic()):
                self._remove(record, f"no heartbeat for {self.config.heartbeat_timeout_s:.1f} s")

    async def _replay(self, record: InstanceRecord) -> None:
        record.is_replaying = True
        self.metrics.replays.inc()
        try:
            reply = await self.call(
                record.instance_id, "kv_replay", {"from_seq": record.kv_next_seq}
            )
        except Exception as e:
            record.is_replaying = False
            log.warning("controller: KV replay from %s failed: %s", record.instance_id, e)
            return
        if self.registry.get(record.instance_id) is record:
            kv_sync.apply_replay(self.index, record, reply, P.decode_kv_event)

    def _remove(self, record: InstanceRecord, reason: str) -> None:
        """Out of rotation: its index entries dropped, its requests failed over."""
        if self.registry.get(record.instance_id) is record:
            self.registry.remove(record.instance_id)
        self.index.drop_instance(record.instance_id)
        self.metrics.failed.inc()
        self._info = None
        self._changed.set()
        log.warning(
            "controller: instance %s/%s out of rotation: %s",
            record.instance_id,
            record.incarnation,
            reason,
        )
        for rid in list(record.request_ids):
            flight = self._flights.get(rid)
            if flight is not None:
                flight.queue.put_nowait(_InstanceLost(reason))
        record.request_ids.clear()
        for future, peer in list(self._calls.values()):
            if peer == record.peer and not future.done():
                future.set_exception(EngineDeadError(reason))

    def _send(self, record: InstanceRecord, msg_type: str, *body) -> None:
        # P.pack's frame, from one reused Packer: msgpack.packb makes a Packer (and mallocs its
        # 1 MiB buffer) per call.
        self._send_frame(record, self._packer.pack([msg_type, list(body)]))

    def _send_frame(self, record: InstanceRecord, frame: bytes) -> None:
        sock = self._sock
        try:
            sock.send(record.peer, _SNDMORE_NOBLOCK)
            sock.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError as e:  # the peer is gone (ROUTER_MANDATORY)
            if not self._sock.closed:
                self._remove(record, f"unreachable: {e}")
        self._wake_if_readable()

    def _wake_if_readable(self) -> None:
        """`_wake` if a frame waits (the send may have consumed the FD's edge): one
        getsockopt instead of a `_drain` whose first recv raises Again."""
        try:
            is_readable = self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN
        except zmq.ZMQError:  # closed: nothing to read
            return
        if is_readable:
            self._wake()
