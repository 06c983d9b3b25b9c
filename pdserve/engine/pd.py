"""The worker half of the PD hand-off: one instance's KV cache registered with a kvxfer transport,
sends started when a SEND request's prefill is done, polled from the worker loop.

Prefill side (KV_SEND + a SEND request): the scheduler holds the request's blocks (SENDING_KV)
after its one sampled token; `after_step` then pushes the prompt's blocks the receiver lacks
into the receiver's reserved blocks, whole prompt at once (layer streaming is a follow-up).
`poll` reports each finished send (DONE or FAILED) and releases the blocks either way, so the
lease only matters when no order ever comes (driver gone, request aborted before the order).

    prefill block table  | b0 | b1 | b2 | b3 |      prompt of 4 blocks, receiver caches 1
    receiver reserved         | d0 | d1 | d2 |      src = blocks[1:4], dst = reservation

Remote prefix pull (an order with `block_hashes`, no request): the holder pins the cached
blocks of those hashes (held like a SEND request's, under the same lease) and pushes the ones
the receiver lacks into its reserved blocks; the receiver publishes them in its prefix cache.

Decode side (a RECEIVE request): `drain_reservations` hands the scheduler's reservations to the
driver; `received(rid, first_token | None)` continues the request (None: recompute locally).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pdserve.engine import protocol as P
from pdserve.kvxfer import Fault, FaultKind, TransferHandle, TransferSpec, TransferStatus
from pdserve.sched.request import RequestStatus, SchedRequest
from pdserve.sched.scheduler import Scheduler
from pdserve.types import KVReservation, KVRole, SamplingParams, TokenEvent


@dataclass(slots=True)
class _Send:
    order: P.KVSendOrder
    first_token_id: int | None
    handle: TransferHandle | None = None
    num_blocks: int = 0
    posted_s: float = 0.0


class KVHandoff:
    """Not thread-safe: the worker loop owns it. `transport` is a registered KVTransport."""

    def __init__(self, scheduler: Scheduler, transport, kv_meta: bytes, timeout_s: float = 5.0):
        self.scheduler = scheduler
        self.transport = transport
        self.kv_meta = kv_meta
        self.timeout_s = timeout_s  # per transfer; below the scheduler's lease (blocks stay put)
        self.orders: dict[str, P.KVSendOrder] = {}  # ordered, prefill not done yet
        self.first_tokens: dict[str, int] = {}  # prefill done, no order yet
        self.sends: dict[str, _Send] = {}  # posted, polling
        self._peers: dict[bytes, str] = {}  # receiver metadata -> transport peer name
        self._failed: list[P.KVSendResult] = []  # ended before posting; reported by poll

    # ---- prefill side ---------------------------------------------------------------------

    def order(self, order: P.KVSendOrder) -> None:
        """The driver's KV_SEND. Usually arrives before the prefill is done; either order works."""
        rid = order.request_id
        if order.block_hashes:  # remote prefix pull: send cached blocks, no request behind
            if self._hold_prefix(rid, order.block_hashes):
                self._start(order, None)
            else:
                self._failed.append(
                    P.KVSendResult(rid, False, 0, 0, 0.0, None, "prefix no longer cached")
                )
        elif rid in self.first_tokens:
            self._start(order, self.first_tokens.pop(rid))
        elif rid in self.scheduler.requests:
            self.orders[rid] = order
        else:  # unknown, aborted, or the lease already ran out: nothing to send
            self._failed.append(P.KVSendResult(rid, False, 0, 0, 0.0, None, "no KV held"))

    def after_step(self, events: list[TokenEvent]) -> None:
        """Start the sends of SEND requests whose prefill finished in this step."""
        for ev in events:
            rid = ev.request_id
            if not ev.is_finished or rid not in self.scheduler.sending:
                continue
            first = ev.new_token_ids[-1] if ev.new_token_ids else None
            order = self.orders.pop(rid, None)
            if order is None:
                self.first_tokens[rid] = first
            else:
                self._start(order, first)

    def abort(self, request_id: str, reason) -> None:
        """The driver aborted the request. A posted transfer may still read its blocks: they
        are released when it ends (poll). Otherwise they are freed now, live or held."""
        order = self.orders.pop(request_id, None)
        self.first_tokens.pop(request_id, None)
        if request_id in self.sends:
            return
        self.scheduler.finish(request_id, reason)
        if order is not None:  # every KV_SEND gets one KV_SENT
            self._failed.append(P.KVSendResult(request_id, False, 0, 0, 0.0, None, "aborted"))

    def poll(self) -> list[P.KVSendResult]:
        """Finished sends since the last call; their blocks are released."""
        results, self._failed = self._failed, []
        for rid, send in list(self.sends.items()):
            status = self.transport.poll(send.handle)
            if status is TransferStatus.PENDING:
                continue
            del self.sends[rid]
            self.scheduler.release_kv(rid)
            is_ok = status is TransferStatus.DONE
            results.append(
                P.KVSendResult(
                    rid, is_ok, send.num_blocks, send.handle.nbytes if is_ok else 0,
                    time.monotonic() - send.posted_s, send.first_token_id,
                    None if is_ok else "transfer failed",
                )
            )  # fmt: skip
        for rid in [r for r in self.first_tokens if r not in self.scheduler.sending]:
            del self.first_tokens[rid]  # the lease ran out before any order came
        return results

    @property
    def is_busy(self) -> bool:
        return bool(self.sends or self._failed)

    def _start(self, order: P.KVSendOrder, first_token_id: int | None) -> None:
        rid = order.request_id
        req = self.scheduler.sending.get(rid)
        if req is None:
            self._failed.append(P.KVSendResult(rid, False, 0, 0, 0.0, None, "no KV held"))
            return
        first_block = order.num_cached_tokens // self.scheduler.block_size
        num_blocks = len(order.dst_block_ids)
        src = req.block_ids[first_block : first_block + num_blocks]
        try:
            peer = self._peer(order.peer_meta)
            if len(src) != num_blocks:
                raise ValueError(f"{len(src)} prompt blocks to send, {num_blocks} reserved")
            spec = TransferSpec(rid, peer, src, order.dst_block_ids, timeout_s=self.timeout_s)
            handle = self.transport.send(spec)
        except Exception as e:  # a bad order fails this hand-off only
            self.scheduler.release_kv(rid)
            error = f"{type(e).__name__}: {e}"
            self._failed.append(P.KVSendResult(rid, False, 0, 0, 0.0, first_token_id, error))
            return
        self.sends[rid] = _Send(order, first_token_id, handle, num_blocks, time.monotonic())

    def _hold_prefix(self, request_id: str, block_hashes) -> bool:
        """Pin the cached blocks of `block_hashes` (every one must be cached) as a SENDING_KV
        holder, released by `poll` when the send ends or by the scheduler's lease."""
        sched = self.scheduler
        if request_id in sched.requests or request_id in sched.sending:
            return False
        blocks = sched.kv.prefix_cache.match(block_hashes)
        if len(blocks) < len(block_hashes):
            return False
        holder = SchedRequest(
            request_id, [], 0, SamplingParams(max_tokens=1), (), 0.0,
            status=RequestStatus.SENDING_KV, kv_role=KVRole.SEND,
        )  # fmt: skip
        if not sched.kv.allocate_slots(holder, 0, blocks):  # takes a reference on each
            return False
        sched.sending[request_id] = holder
        return True

    def _peer(self, meta: bytes) -> str:
        name = self._peers.get(meta)
        if name is None:
            name = self._peers[meta] = self.transport.add_peer(meta)
        return name

    # ---- decode side ----------------------------------------------------------------------

    def drain_reservations(self) -> list[KVReservation]:
        return self.scheduler.drain_kv_reservations()

    def received(self, request_id: str, first_token_id: int | None) -> list[TokenEvent]:
        return self.scheduler.finish_receiving(request_id, first_token_id)

    # ---- views and tests ------------------------------------------------------------------

    def status(self) -> dict:
        stats = self.transport.stats
        return {
            "sending": list(self.scheduler.sending),
            "receiving": list(self.scheduler.receiving),
            "inflight": list(self.sends),
            "orders": list(self.orders),
            "num_transfers": stats.num_transfers,
            "num_done": stats.num_done,
            "num_failed": stats.num_failed,
            "bytes_done": stats.bytes_done,
        }

    def inject_fault(self, args: dict) -> None:
        fault = Fault(
            FaultKind(args["kind"]),
            args.get("request_id"),
            args.get("delay_s", 0.0),
            args.get("keep_fraction", 0.5),
        )
        self.transport.inject_fault(fault, args.get("count", 1))

    def close(self) -> None:
        self.transport.close()


def make_handoff(scheduler: Scheduler, kv_cache, kind: str, name: str) -> KVHandoff:
    """Register `kv_cache` ([L, num_blocks, 2, bs, H, D], contiguous) with a new transport."""
    from pdserve.kvxfer import make_transport

    transport = make_transport(kind, name)
    meta = transport.register(kv_cache)
    timeout_s = min(5.0, scheduler.config.kv_lease_s / 2)
    return KVHandoff(scheduler, transport, meta, timeout_s)
