"""TransportBase: the part every transport shares — metadata, spec -> descriptors, faults,
timeouts and stats. A backend only posts descriptors and checks a token:

    send(spec) -> descriptors (coalesce) -> fault? -> _post(peer, descs, direction) -> token
    poll(h)    -> post if a delay ran out -> _check(token) -> DONE / FAILED / timeout FAILED
"""

from __future__ import annotations

import itertools
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pdserve.kvxfer.coalesce import Descriptors, block_runs, check_block_ids, layer_descriptors
from pdserve.kvxfer.coalesce import truncate as truncate_descs
from pdserve.kvxfer.faults import Fault, FaultInjector, FaultKind
from pdserve.kvxfer.spec import (
    Direction,
    KVLayout,
    PeerMetadata,
    TransferHandle,
    TransferSpec,
    TransferStatus,
    TransportStats,
)

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Transfer:
    handle: TransferHandle
    peer: Any  # the backend's peer record
    descs: Descriptors
    direction: Direction
    post_at_s: float
    deadline_s: float
    is_dropped: bool = False
    is_truncated: bool = False
    is_posted: bool = False
    token: Any = None


class TransportBase:
    """Implements KVTransport (see transport.py for the contract) over four backend hooks."""

    kind = "base"

    def __init__(
        self, name: str, *, timeout_s: float = 10.0, clock: Callable[[], float] | None = None
    ):
        self.name = name
        self.timeout_s = timeout_s
        self.clock = clock or time.monotonic
        self.stats = TransportStats()
        self.faults = FaultInjector()
        self.layout: KVLayout | None = None
        self._peers: dict[str, tuple[KVLayout, Any]] = {}
        self._transfers: dict[int, _Transfer] = {}
        self._ids = itertools.count()

    # --- backend hooks -------------------------------------------------------------------
    def _register(self, kv_cache) -> dict[str, Any]:
        raise NotImplementedError

    def _add_peer(self, meta: PeerMetadata) -> Any:
        raise NotImplementedError

    def _post(self, peer: Any, descs: Descriptors, direction: Direction) -> Any:
        """Start moving `descs` (push: local -> peer; pull: peer -> local); returns a token."""
        raise NotImplementedError

    def _check(self, token: Any) -> bool | None:
        """True: landed; False: failed; None: still moving. Never blocks."""
        raise NotImplementedError

    def _cancel(self, token: Any) -> None:
        """Best effort: stop or forget a transfer that timed out."""

    def close(self) -> None:
        """Cancel what is still moving and forget every transfer."""
        for xfer in self._transfers.values():
            if xfer.is_posted and xfer.token not in (None, _FAILED_TOKEN):
                self._cancel(xfer.token)
        self._transfers.clear()

    # --- KVTransport -----------------------------------------------------------------------
    def register(self, kv_cache) -> bytes:
        if self.layout is not None:
            raise RuntimeError(f"{self.name}: a KV cache is already registered")
        layout = KVLayout.of(kv_cache)
        backend = self._register(kv_cache)
        self.layout = layout
        return pickle.dumps(PeerMetadata(self.name, self.kind, layout, backend))

    def add_peer(self, metadata: bytes) -> str:
        meta: PeerMetadata = pickle.loads(metadata)
        if meta.transport != self.kind:
            raise ValueError(f"peer {meta.name} speaks {meta.transport}, not {self.kind}")
        self._peers[meta.name] = (meta.layout, self._add_peer(meta))
        return meta.name

    def inject_fault(self, fault: Fault, count: int = 1) -> None:
        self.faults.inject(fault, count)

    def send(self, spec: TransferSpec) -> TransferHandle:
        if self.layout is None:
            raise RuntimeError(f"{self.name}: register a KV cache before sending")
        if spec.peer not in self._peers:
            raise ValueError(f"{self.name}: unknown peer {spec.peer!r}")
        peer_layout, peer = self._peers[spec.peer]
        src, dst = (
            (self.layout, peer_layout) if spec.direction == "push" else (peer_layout, self.layout)
        )
        check_block_ids(spec.src_block_ids, src, "src")
        check_block_ids(spec.dst_block_ids, dst, "dst")
        layer_end = src.num_layers if spec.layer_end is None else spec.layer_end
        runs = block_runs(spec.src_block_ids, spec.dst_block_ids)
        descs = layer_descriptors(runs, src, dst, spec.layer_start, layer_end)
        handle = TransferHandle(next(self._ids), spec.request_id, spec.peer, descs.total_bytes)
        now = self.clock()
        timeout_s = self.timeout_s if spec.timeout_s is None else spec.timeout_s
        xfer = _Transfer(handle, peer, descs, spec.direction, now, now + timeout_s)
        self._apply_fault(xfer, self.faults.take(spec.request_id))
        self._transfers[handle.transfer_id] = xfer
        self.stats.num_transfers += 1
        self.stats.num_descriptors += len(xfer.descs)
        if xfer.post_at_s <= now and not xfer.is_dropped:
            self._post_now(xfer)
        return handle

    def poll(self, handle: TransferHandle) -> TransferStatus:
        xfer = self._transfers[handle.transfer_id]
        now = self.clock()
        if not (xfer.is_posted or xfer.is_dropped) and xfer.post_at_s <= now < xfer.deadline_s:
            self._post_now(xfer)
        if xfer.is_posted:
            landed = self._landed(xfer.token)
            if landed is True:
                return self._finish(xfer, ok=not xfer.is_truncated, why="truncated")
            if landed is False:
                return self._finish(xfer, ok=False, why="backend error")
        if now >= xfer.deadline_s:
            if xfer.is_posted and xfer.token not in (None, _FAILED_TOKEN):
                self._cancel(xfer.token)
            return self._finish(xfer, ok=False, why="timeout")
        return TransferStatus.PENDING

    # --- internals -----------------------------------------------------------------------
    def _apply_fault(self, xfer: _Transfer, fault: Fault | None) -> None:
        if fault is None:
            return
        if fault.kind is FaultKind.DROP:
            xfer.is_dropped = True
        elif fault.kind is FaultKind.DELAY:
            xfer.post_at_s += fault.delay_s
        elif fault.kind is FaultKind.TRUNCATE:
            xfer.descs = truncate_descs(xfer.descs, fault.keep_fraction)
            xfer.is_truncated = True

    def _landed(self, token: Any) -> bool | None:
        if token is None:
            return True
        return False if token is _FAILED_TOKEN else self._check(token)

    def _post_now(self, xfer: _Transfer) -> None:
        xfer.is_posted = True
        if len(xfer.descs) == 0:
            return  # nothing to move: token None means landed
        try:
            xfer.token = self._post(xfer.peer, xfer.descs, xfer.direction)
        except Exception as exc:  # a backend failure is a FAILED transfer, not a crash
            logger.warning("%s: posting %s failed: %s", self.name, xfer.handle, exc)
            xfer.token = _FAILED_TOKEN

    def _finish(self, xfer: _Transfer, ok: bool, why: str) -> TransferStatus:
        del self._transfers[xfer.handle.transfer_id]
        if ok:
            self.stats.num_done += 1
            self.stats.bytes_done += xfer.handle.nbytes
            return TransferStatus.DONE
        self.stats.num_failed += 1
        logger.info("%s: transfer %s failed: %s", self.name, xfer.handle, why)
        return TransferStatus.FAILED


class _FailedToken:
    """Stands for a transfer whose post raised; `_check` is never asked about it."""


_FAILED_TOKEN = _FailedToken()
