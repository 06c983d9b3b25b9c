"""The cluster controller: an EngineClient (engine/client.py) over a fleet of workers.

    server ── generate(req) ──> Controller ── route (policy over snapshots + prefix index)
                                    │  SUBMIT ──> worker "<id>/<incarnation>"  (ZMQ ROUTER)
                                    │  <── TOKENS / KV / HEARTBEAT / REPLY / REGISTER
                                    └─ liveness: no heartbeat for `heartbeat_timeout_s` -> out

Messages in and out and liveness are worker_link.py's (a mixin of `Controller`); routing and
dispatch are here.

Workers connect to `address` and REGISTER (with the control token when one is set); spawning
them is deploy/'s job. A request whose instance dies before its first event is routed again
(`max_retries` times, never to the same instance); one that dies mid-stream ends with an
error event (finish_reason "error"). `Overloaded` is raised before any event when SLO admission
refuses (the server answers 429 with Retry-After).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field

import zmq

from pdserve.cluster.block_hasher import BlockHasher
from pdserve.cluster.fleet_status import aggregate_status, fleet_info
from pdserve.cluster.pd_router import PDConfig, PDRouter
from pdserve.cluster.pending import PendingPrefixes
from pdserve.cluster.policies import PolicyConfig, admit, make_policy
from pdserve.cluster.prefix_index import PrefixIndex
from pdserve.cluster.prom import ControllerMetrics
from pdserve.cluster.pull import PrefixPuller, PullConfig
from pdserve.cluster.registry import InstanceRecord, Registry
from pdserve.cluster.worker_link import WorkerLink, _InstanceLost, make_packer, pack_submit
from pdserve.engine import protocol as P
from pdserve.engine.client import EngineDeadError, Overloaded
from pdserve.types import FinishReason, Request, TokenEvent


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    address: str = "tcp://127.0.0.1:*"  # where workers connect (bind; ":*" picks a port)
    routing: str = "ttft"
    policy: PolicyConfig = PolicyConfig()
    heartbeat_timeout_s: float = 1.0  # + MONITOR_PERIOD_S: out of rotation within 2 s
    max_retries: int = 1  # re-routes of a request whose instance died before its first event
    slo_ttft_s: float | None = None  # SLO admission off when None
    slo_margin: float = 0.2
    retry_after_s: int = 1
    control_token: str | None = None  # REGISTER must carry it when set
    pd: PDConfig = PDConfig()
    pull: PullConfig | None = None  # remote prefix pull between fused instances (off: None)
    # The garbage collector's young-generation threshold from `start` on (None: left as it is).
    # Each request allocates a few dozen tracked objects, nearly all freed by reference count:
    # at CPython's 700 a collection ran every ~130 requests, with its older generations ~2 %
    # of the controller's CPU.
    gc_threshold: int | None = 10_000


class _Events:
    """A flight's events: `asyncio.Queue`'s put_nowait / get without its bookkeeping (no
    maxsize, join or task_done). One reader at a time."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque = deque()
        self._waiter: asyncio.Future | None = None

    def put_nowait(self, item) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self):
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("a flight's events have one reader at a time")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


@dataclass(slots=True)
class _Flight:
    """A request in flight on one instance."""

    queue: _Events
    instance_id: str
    dispatched_s: float
    block_hashes: list[int] = field(default_factory=list)  # in the pending overlay until started
    has_started: bool = False


class Controller(WorkerLink):
    def __init__(
        self,
        config: ControllerConfig = ControllerConfig(),
        metrics: ControllerMetrics | None = None,
    ):
        self.config = config
        self.metrics = metrics or ControllerMetrics()
        self.policy = make_policy(config.routing, config.policy)
        self.pd = PDRouter(self, config.pd)
        self.puller = PrefixPuller(self, config.pull) if config.pull is not None else None
        self.registry = Registry(config.heartbeat_timeout_s, config.control_token)
        self.index = PrefixIndex()
        self.incarnation = uuid.uuid4().hex[:12]
        self.error: str | None = None
        self.last_status: P.WorkerStatus | None = None
        self._info: P.WorkerInfo | None = None
        self._flights: dict[str, _Flight] = {}
        self._unstarted: dict[str, None] = {}
        self._hasher: BlockHasher | None = None
        self.pending = PendingPrefixes()  # prompts routed, not started: routing counts them
        self._calls: dict[int, asyncio.Future] = {}
        self._call_ids = itertools.count()
        self._tasks: list[asyncio.Task] = []
        self._changed = asyncio.Event()  # set on every registration, removal or start failure
        self.start_failures: dict[str, str] = {}  # instance id -> why it could not start
        self._fused: tuple[int, list[InstanceRecord]] = (-1, [])  # (registry.version, records)
        # A plain socket read from the event loop (`_drain`): pyzmq's asyncio socket costs a
        # future per message. No send high-water mark: a send never waits or drops (the pyzmq
        # asyncio socket queued unsent frames without bound too).
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.bind(config.address)
        self.address = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._is_drain_due = False  # a _drain is scheduled on the loop
        self._packer = make_packer()

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        threshold = self.config.gc_threshold
        if threshold is not None and gc.get_threshold()[0] < threshold:
            gc.set_threshold(threshold, *gc.get_threshold()[1:])
        self._loop.add_reader(self._sock.FD, self._drain)
        self._wake()  # frames that arrived before the reader was added
        self._tasks = [asyncio.create_task(self._monitor())]

    async def wait_for_instances(
        self, num: int, timeout_s: float | None = None, expected: Collection[str] = ()
    ) -> None:
        """Until `num` instances are registered; RuntimeError as soon as one of the `expected`
        instance ids reports that it could not start (a fleet that would never be complete)."""

        async def wait() -> None:
            while len(self.registry) < num:
                failed = [f"{i}: {e}" for i, e in self.start_failures.items() if i in expected]
                if failed:
                    raise RuntimeError(f"worker failed to start: {'; '.join(failed)}")
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout_s)

    async def close(self, shutdown_workers: bool = True) -> None:
        if shutdown_workers:
            for record in self.registry.live():
                self._send(record, P.SHUTDOWN)
            await asyncio.sleep(0.05)  # let the frames leave
        for record in self.registry.live():
            self._remove(record, "the controller was shut down")
        self.error = "the controller was shut down"
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._loop is not None:
            self._loop.remove_reader(self._sock.FD)
        self._sock.close()
        self._ctx.term()

    @property
    def info(self) -> P.WorkerInfo | None:
        """The fleet as one engine (see fleet_status.fleet_info); None before any instance."""
        if self._info is None and len(self.registry):
            self._info = fleet_info(self.registry.live(), self.incarnation)
        return self._info

    @property
    def num_unstarted(self) -> int:
        return len(self._unstarted)

    # ---- requests --------------------------------------------------------------------------

    async def generate(self, req: Request) -> AsyncIterator[TokenEvent]:
        if self.pd.is_active:  # a fleet with decode instances: cluster/pd_router.py
            async for event in self.pd.generate(req):
                yield event
            return
        rid, excluded, num_retries = req.request_id, [], 0
        flight: _Flight | None = None
        is_done = False
        self._unstarted[rid] = None
        try:
            while True:
                flight = self._dispatch(req, excluded)
                lost = None
                while lost is None:
                    item = await flight.queue.get()
                    if isinstance(item, _InstanceLost):
                        lost = item
                    elif isinstance(item, Exception):
                        is_done = True
                        raise item
                    else:
                        self._unstarted.pop(rid, None)
                        is_done = item.is_finished
                        yield item
                        if is_done:
                            return
                self._release(rid)
                if flight.has_started:
                    is_done = True
                    yield TokenEvent(
                        rid,
                        (),
                        FinishReason.ERROR,
                        error=f"instance {flight.instance_id} failed mid-stream: {lost}",
                    )
                    return
                if num_retries >= self.config.max_retries:
                    raise EngineDeadError(
                        f"instance {flight.instance_id} failed before the first token ({lost}); "
                        f"retried {num_retries} time(s)"
                    )
                num_retries += 1
                excluded.append(flight.instance_id)
                self.metrics.retries.inc()
        finally:
            self._unstarted.pop(rid, None)
            if flight is not None and not is_done:
                record = self.registry.get(flight.instance_id)
                if record is not None and rid in record.request_ids:
                    self._send(record, P.ABORT, [rid], "abort")
            self._release(rid)

    def _fused_records(self) -> list[InstanceRecord]:
        """Live fused instances in registration order, rebuilt only when the fleet changed."""
        version, records = self._fused
        if version != self.registry.version:
            records = [r for r in self.registry.live() if r.info.role == "fused"]
            self._fused = (self.registry.version, records)
        return records

    def _dispatch(self, req: Request, excluded: list[str]) -> _Flight:
        """Route `req` and submit it; Overloaded or EngineDeadError if it cannot go anywhere."""
        records = self._fused_records()
        if excluded:
            records = [r for r in records if r.instance_id not in excluded]
        if not records:
            tried = f" (failed on {', '.join(excluded)})" if excluded else ""
            raise EngineDeadError(f"no live instance to run the request{tried}")
        start_s = time.perf_counter()
        now = time.monotonic()
        hashes: list[int] = []
        packed_blocks = b""
        matched: dict[str, int] = {}
        if self.policy.needs_prefix:
            block_size = records[0].info.block_size
            if self._hasher is None or self._hasher.block_size != block_size:
                self._hasher = BlockHasher(block_size)
            hashes, packed_blocks = self._hasher.hash_and_pack(req.prompt_token_ids)
            matched = self.pending.matched(self.index, hashes)
        decision = self.policy.route(req, [r.snapshot() for r in records], now, matched)
        record = self.registry.get(decision.instance_id)
        num_matched = decision.matched_blocks * record.info.block_size
        self.metrics.observe_route(
            record.instance_id, time.perf_counter() - start_s, decision.est_ttft_s, num_matched
        )
        if not admit(decision, self.config.slo_ttft_s, self.config.slo_margin):
            self.metrics.rejected.inc()
            raise Overloaded(
                f"the fleet cannot meet the TTFT SLO of "
                f"{self.config.slo_ttft_s * 1000:.0f} ms now (best estimate "
                f"{decision.est_ttft_s * 1000:.0f} ms); retry later",
                self.config.retry_after_s,
            )
        if self.puller is not None and (flight := self.puller.maybe_submit(record, req, hashes)):
            return flight  # submitted once the pull of a longer cached prefix ends
        return self._submit(record, req, hashes, num_matched, packed_blocks=packed_blocks)

    def _submit(
        self,
        record,
        req: Request,
        hashes: list[int],
        num_matched: int,
        send: bool = True,
        packed_blocks: bytes | None = None,
    ) -> _Flight:
        """Send `req` to `record` and track it as a flight (its events arrive on the queue).
        `packed_blocks`: the prompt's full blocks packed by `self._hasher` (from
        `hash_and_pack`, with `hashes`), spliced into the SUBMIT instead of packed again."""
        flight = _Flight(_Events(), record.instance_id, time.monotonic(), hashes)
        self._flights[req.request_id] = flight
        record.request_ids[req.request_id] = None
        record.num_routed += 1
        record.add_unstarted(req.request_id, max(len(req.prompt_token_ids) - num_matched, 1))
        self.pending.add(record.instance_id, hashes)
        if send:  # else the caller sends the SUBMIT later (cluster/pull.py)
            # Hashed at the instance's block size, the prompt need not be hashed again there.
            hasher = self._hasher
            fits = hashes and hasher is not None and hasher.block_size == record.info.block_size
            if fits and packed_blocks is not None:
                frame = pack_submit(self._packer, req, hashes, packed_blocks, hasher.block_size)
                self._send_frame(record, frame)
            else:
                self._send(record, P.SUBMIT, P.encode_request(req, hashes if fits else None))
        return flight

    def _release(self, rid: str) -> None:
        flight = self._flights.pop(rid, None)
        if flight is None:
            return
        self.pending.remove(flight.instance_id, flight.block_hashes)
        record = self.registry.get(flight.instance_id)
        if record is not None:
            record.request_ids.pop(rid, None)
            record.started(rid)

    async def abort(self, request_id: str) -> None:
        if self.pd.is_active and self.pd.abort(request_id):  # both sides of a PD hand-off
            return
        flight = self._flights.get(request_id)
        record = flight and self.registry.get(flight.instance_id)
        if record is not None:
            self._send(record, P.ABORT, [request_id], "abort")

    # ---- fleet views -----------------------------------------------------------------------

    async def status(self) -> P.WorkerStatus:
        """The fleet's load and counters summed, from the last heartbeats (no round trip)."""
        self.last_status = aggregate_status(self.registry.live())
        self.metrics.live.set(len(self.registry))
        self.metrics.index_blocks.set(len(self.index))
        return self.last_status

    async def check_integrity(self) -> None:
        records = self.registry.live()
        await asyncio.gather(*(self.call(r.instance_id, "check_integrity") for r in records))
