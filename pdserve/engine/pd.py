"""The worker half of the PD hand-off: one instance's KV cache registered with a kvxfer transport;
a SEND request's prompt KV streamed into the receiver's reserved blocks while it is computed,
polled from the worker loop.

Prefill side (KV_SEND + a SEND request). With the order in hand before the prompt's last chunk
runs (the usual case: the driver sends it right behind the SUBMIT), the KV is streamed:

    step of an earlier chunk   after it: the full blocks it wrote, all layers, one transfer
    step of the last chunk     before it: blocks written by earlier steps (or prefix hits);
                               during it: as layer i finishes (the model's layer hook), layer i
                               of the remaining blocks, one transfer per layer
    after the step             the request holds its blocks (SENDING_KV) until every transfer
                               ended; `poll` then reports DONE/FAILED and releases them

An order that comes after the prefill is done sends the whole prompt at once. Only the blocks
the receiver lacks move:

    prefill block table  | b0 | b1 | b2 | b3 |      prompt of 4 blocks, receiver caches 1
    receiver reserved         | d0 | d1 | d2 |      src = blocks[1:4], dst = reservation

A transfer that fails, a preempted or aborted request, ends the send FAILED (the receiver
recomputes); it is still reported only once every posted transfer ended, so the receiver's
blocks are never freed while one may write into them. The lease only matters when no order
ever comes (driver gone, request aborted before the order).

Remote prefix pull (an order with `block_hashes`, no request): the holder pins the cached
blocks of those hashes (held like a SEND request's, under the same lease) and pushes the ones
the receiver lacks into its reserved blocks; the receiver publishes them in its prefix cache.

Decode side (a RECEIVE request): `drain_reservations` hands the scheduler's reservations to the
driver; `received(rid, first_token | None)` continues the request (None: recompute locally).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from pdserve.engine import protocol as P
from pdserve.kvxfer import Fault, FaultKind, TransferHandle, TransferSpec, TransferStatus
from pdserve.sched.request import RequestStatus, SchedRequest
from pdserve.sched.scheduler import Scheduler
from pdserve.types import KVReservation, KVRole, SamplingParams, TokenEvent


@dataclass(slots=True)
class _Send:
    """One hand-off on the sender: blocks [first_block, first_block + num_blocks) of the
    request's table go into `order.dst_block_ids`; blocks before `next_block` (relative) are
    posted for every layer."""

    order: P.KVSendOrder
    peer: str
    first_block: int
    num_blocks: int
    posted_s: float
    first_token_id: int | None = None
    handles: list[TransferHandle] = field(default_factory=list)  # still pending
    next_block: int = 0
    num_layers_streamed: int = 0  # of the last chunk's remaining blocks, this step
    num_bytes_done: int = 0
    num_transfers: int = 0
    is_failed: bool = False
    error: str | None = None

    @property
    def is_posted(self) -> bool:
        return self.next_block == self.num_blocks


class KVHandoff:
    """Not thread-safe: the worker loop owns it. `transport` is a registered KVTransport."""

    def __init__(
        self,
        scheduler: Scheduler,
        transport,
        kv_meta: bytes,
        timeout_s: float = 5.0,
        num_layers: int = 0,
        before_post=None,
    ):
        self.scheduler = scheduler
        self.transport = transport
        self.kv_meta = kv_meta
        self.timeout_s = timeout_s  # per transfer; below the scheduler's lease (blocks stay put)
        self.num_layers = num_layers  # of the registered cache; 0: no layer streaming
        # Called before each transfer is posted (GPU + a transport not ordered after the
        # compute stream: wait for the queued compute); None on CPU.
        self.before_post = before_post
        self.first_tokens: dict[str, int | None] = {}  # prefill done, no order yet
        self.sends: dict[str, _Send] = {}  # ordered: streaming or posted, polling
        self._peers: dict[bytes, str] = {}  # receiver metadata -> transport peer name
        self._failed: list[P.KVSendResult] = []  # ended before posting; reported by poll
        self._streaming: list[_Send] = []  # the last chunk's sends of the step that runs

    # ---- prefill side: orders -------------------------------------------------------------

    def order(self, order: P.KVSendOrder) -> None:
        """The driver's KV_SEND. Usually arrives before the prefill is done; either order works."""
        rid = order.request_id
        if order.block_hashes:  # remote prefix pull: send cached blocks, no request behind
            if self._hold_prefix(rid, order.block_hashes):
                self._start(order, None)
            else:
                self._fail_early(rid, "prefix no longer cached")
        elif rid in self.first_tokens:
            self._start(order, self.first_tokens.pop(rid))
        elif rid in self.scheduler.requests:
            self._open(order)  # streamed while the prefill runs
        else:  # unknown, aborted, or the lease already ran out: nothing to send
            self._fail_early(rid, "no KV held")

    def abort(self, request_id: str, reason) -> None:
        """The driver aborted the request. A posted transfer may still read its blocks: the
        send is reported when every transfer ended. The request's blocks are freed now."""
        self.first_tokens.pop(request_id, None)
        send = self.sends.get(request_id)
        if send is not None:
            self._fail(send, "aborted")
        if send is None or request_id in self.scheduler.requests:
            self.scheduler.finish(request_id, reason)

    # ---- prefill side: the step (called by StreamingExecutor) -----------------------------

    def before_step(self, plan) -> bool:
        """Post what earlier steps wrote; arm layer streaming for last chunks. True if armed."""
        self._streaming.clear()
        if not self.sends:
            return False
        bs = self.scheduler.block_size
        for rid in plan.preempted_ids:
            if rid in self.sends:  # its blocks were freed: what was posted may be reused
                self._fail(self.sends[rid], "preempted")
        for seq in plan.seqs:
            send = self.sends.get(seq.request_id)
            if send is None or send.is_failed or send.is_posted:
                continue
            self._post_blocks(send, seq.num_computed_tokens // bs)
            if seq.context_len >= seq.request.prompt_len and self.num_layers:
                send.num_layers_streamed = 0
                self._streaming.append(send)
        return bool(self._streaming)

    def on_layer(self, layer: int) -> None:
        """The model finished `layer` of this step: post that layer of each last chunk."""
        for send in self._streaming:
            if not send.is_failed and send.num_layers_streamed == layer:
                self._post(send, send.next_block, send.num_blocks, layer, layer + 1)
                send.num_layers_streamed = layer + 1

    def after_step(self, plan) -> None:
        """The step's KV is written: post full blocks of earlier chunks, finish last chunks."""
        if not self.sends:
            return
        bs = self.scheduler.block_size
        streamed = {id(s) for s in self._streaming}
        for seq in plan.seqs:
            send = self.sends.get(seq.request_id)
            if send is None or send.is_failed or send.is_posted:
                continue
            if id(send) in streamed:  # layers the hook did not see (e.g. a graph replay)
                if send.num_layers_streamed < self.num_layers:
                    start = send.num_layers_streamed
                    self._post(send, send.next_block, send.num_blocks, start, self.num_layers)
                send.next_block = send.num_blocks
            elif seq.context_len >= seq.request.prompt_len:
                self._post_blocks(send, send.first_block + send.num_blocks)
            else:
                self._post_blocks(send, seq.context_len // bs)
        self._streaming.clear()

    def on_events(self, events: list[TokenEvent]) -> None:
        """SEND requests whose prefill finished (their first token): noted until their order
        comes; an order that came after the last chunk was launched (async scheduling: between
        the step's launch and its outputs) found nothing left to stream, so its blocks go now."""
        for ev in events:
            rid = ev.request_id
            if not ev.is_finished or rid not in self.scheduler.sending:
                continue
            first = ev.new_token_ids[-1] if ev.new_token_ids else None
            send = self.sends.get(rid)
            if send is None:
                self.first_tokens[rid] = first
                continue
            send.first_token_id = first
            if not (send.is_posted or send.is_failed):
                self._post_blocks(send, send.first_block + send.num_blocks)

    def poll(self) -> list[P.KVSendResult]:
        """Sends that ended since the last call; their blocks are released."""
        results, self._failed = self._failed, []
        for rid, send in list(self.sends.items()):
            still = []
            for handle in send.handles:
                status = self.transport.poll(handle)
                if status is TransferStatus.PENDING:
                    still.append(handle)
                elif status is TransferStatus.DONE:
                    send.num_bytes_done += handle.nbytes
                else:
                    self._fail(send, "transfer failed")
            send.handles = still
            if still or rid in self.scheduler.requests:
                continue  # moving, or the prefill (or its stream) is not done
            if not (send.is_posted or send.is_failed):
                if rid not in self.scheduler.sending:
                    self._fail(send, "no KV held")  # the lease ran out first
                else:
                    continue
            del self.sends[rid]
            self.scheduler.release_kv(rid)
            is_ok = not send.is_failed
            results.append(
                P.KVSendResult(
                    rid, is_ok, send.num_blocks if is_ok else 0,
                    send.num_bytes_done if is_ok else 0, time.monotonic() - send.posted_s,
                    send.first_token_id, send.error,
                )
            )  # fmt: skip
        for rid in [r for r in self.first_tokens if r not in self.scheduler.sending]:
            del self.first_tokens[rid]  # the lease ran out before any order came
        return results

    @property
    def is_busy(self) -> bool:
        return bool(self.sends or self._failed)

    # ---- internals ------------------------------------------------------------------------

    def _open(self, order: P.KVSendOrder) -> _Send | None:
        """Track an order; None (and a failed result) if it cannot be sent."""
        rid = order.request_id
        try:
            peer = self._peer(order.peer_meta)
        except Exception as e:  # a bad order fails this hand-off only
            self._fail_early(rid, f"{type(e).__name__}: {e}")
            return None
        first_block = order.num_cached_tokens // self.scheduler.block_size
        send = _Send(order, peer, first_block, len(order.dst_block_ids), time.monotonic())
        self.sends[rid] = send
        return send

    def _start(self, order: P.KVSendOrder, first_token_id: int | None) -> None:
        """Send everything now: the prefill is done (or the blocks are cached, for a pull)."""
        rid = order.request_id
        req = self.scheduler.sending.get(rid)
        if req is None:
            self._fail_early(rid, "no KV held")
            return
        send = self._open(order)
        if send is None:
            self.scheduler.release_kv(rid)
            return
        send.first_token_id = first_token_id
        self._post_blocks(send, send.first_block + send.num_blocks)

    def _post_blocks(self, send: _Send, end_block: int) -> None:
        """Post every layer of the send's blocks before table index `end_block`."""
        end = min(end_block - send.first_block, send.num_blocks)
        if end > send.next_block:
            self._post(send, send.next_block, end, 0, None)
            send.next_block = end

    def _post(self, send: _Send, begin: int, end: int, layer_start: int, layer_end) -> None:
        """One transfer: blocks [begin, end) of the send (relative), layers [start, end)."""
        if begin >= end or send.is_failed:
            return
        if self.before_post is not None:
            self.before_post()
        rid = send.order.request_id
        req = self.scheduler.requests.get(rid) or self.scheduler.sending.get(rid)
        first = send.first_block
        try:
            if req is None or len(req.block_ids) < first + end:
                raise ValueError(f"{rid}: blocks [{first + begin}, {first + end}) not held")
            src = np.asarray(req.block_ids[first + begin : first + end], dtype=np.int64)
            dst = np.asarray(send.order.dst_block_ids[begin:end], dtype=np.int64)
            spec = TransferSpec(rid, send.peer, src, dst, layer_start, layer_end, "push",
                                self.timeout_s)  # fmt: skip
            send.handles.append(self.transport.send(spec))
            send.num_transfers += 1
        except Exception as e:  # a bad order fails this hand-off only
            self._fail(send, f"{type(e).__name__}: {e}")

    def _fail(self, send: _Send, error: str) -> None:
        if not send.is_failed:
            send.is_failed, send.error = True, error

    def _fail_early(self, rid: str, error: str) -> None:
        self._failed.append(P.KVSendResult(rid, False, 0, 0, 0.0, None, error))

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


class StreamingExecutor:
    """Wraps an engine's executor so a step's KV streams out as the model computes it: the
    hand-off posts what is already written before the step, arms the model's per-layer hook
    for last prompt chunks, and posts the rest after. Everything else passes through."""

    def __init__(self, inner, model, handoff: KVHandoff):
        self.inner = inner
        self.model = model
        self.handoff = handoff

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def execute(self, plan):
        return self._run(self.inner.execute, plan)

    def launch(self, plan):
        return self._run(self.inner.launch, plan)

    def _run(self, step, plan):
        armed = self.handoff.before_step(plan)
        if armed:
            self.model.layer_hook = self.handoff.on_layer
        try:
            return step(plan)
        finally:
            if armed:
                self.model.layer_hook = None
            self.handoff.after_step(plan)


def make_handoff(scheduler: Scheduler, kv_cache, kind: str, name: str) -> KVHandoff:
    """Register `kv_cache` ([L, num_blocks, 2, bs, H, D], contiguous) with a new transport."""
    from pdserve.kvxfer import make_transport

    transport = make_transport(kind, name)
    meta = transport.register(kv_cache)
    timeout_s = min(5.0, scheduler.config.kv_lease_s / 2)
    before_post = None
    if kv_cache.is_cuda and kind != "cuda_ipc":  # NIXL does not order after the compute stream
        import torch

        device = kv_cache.device
        before_post = lambda: torch.cuda.current_stream(device).synchronize()  # noqa: E731
    return KVHandoff(scheduler, transport, meta, timeout_s, int(kv_cache.shape[0]), before_post)
