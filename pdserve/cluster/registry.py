"""The controller's view of its fleet: who registered (instance id + incarnation), when each was
last heard, its last snapshot, what was routed to it since, and where its KV event stream is.

Pure bookkeeping: time comes in as `now` (seconds, the controller's monotonic clock); nothing
here sends or receives. An instance is *live* from its REGISTER until it misses heartbeats for
`timeout_s`, its process is seen dead, or a newer incarnation of the same instance id registers.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field, fields
from operator import attrgetter

from pdserve.engine.protocol import WorkerInfo, WorkerStatus
from pdserve.types import InstanceSnapshot

# snapshot() rebuilds the view on every routed or started request: a positional copy of all
# fields with three replaced (dataclasses.replace walks fields() and builds kwargs each time).
_SNAPSHOT_FIELDS = tuple(f.name for f in fields(InstanceSnapshot))
_snapshot_values = attrgetter(*_SNAPSHOT_FIELDS)
_WAITING, _WAITING_TOKENS, _RUNNING_TOKENS = (
    _SNAPSHOT_FIELDS.index(name)
    for name in ("num_waiting", "num_waiting_tokens", "num_running_tokens")
)


@dataclass(slots=True)
class InstanceRecord:
    info: WorkerInfo
    peer: bytes  # ZMQ routing identity b"<instance_id>/<incarnation>"
    last_heard_s: float
    status: WorkerStatus | None = None
    kv_next_seq: int = 0  # the KV event number expected next (the worker's `kv_seq`)
    is_replaying: bool = False  # a kv_replay call is out: KV messages are dropped until it answers
    num_routed: int = 0
    request_ids: dict[str, None] = field(default_factory=dict)  # in flight here, in routing order
    # Routed here, no event yet (queued or prefilling): request id -> uncached prompt tokens.
    unstarted: dict[str, int] = field(default_factory=dict)
    num_unstarted_tokens: int = 0
    _view: InstanceSnapshot | None = None  # snapshot() until the next change

    @property
    def instance_id(self) -> str:
        return self.info.instance_id

    @property
    def incarnation(self) -> str:
        return self.info.incarnation

    def add_unstarted(self, request_id: str, num_tokens: int) -> None:
        self.unstarted[request_id] = num_tokens
        self.num_unstarted_tokens += num_tokens
        self._view = None

    def started(self, request_id: str) -> None:
        if request_id in self.unstarted:
            self.num_unstarted_tokens -= self.unstarted.pop(request_id)
            self._view = None

    def set_status(self, status: WorkerStatus) -> None:
        self.status = status
        self._view = None

    def snapshot(self) -> InstanceSnapshot:
        """Routing's view: the last heartbeat's snapshot, with the prefill queue replaced by the
        controller's own live count (heartbeats lag by up to a period; first events do not).
        Unstarted requests are waiting or mid-prefill; running ones owe one decode token each."""
        if self._view is None:
            snap = self.status.snapshot if self.status is not None else self._empty_snapshot()
            values = list(_snapshot_values(snap))
            values[_WAITING] = len(self.unstarted)
            values[_WAITING_TOKENS] = self.num_unstarted_tokens
            values[_RUNNING_TOKENS] = snap.num_running
            self._view = InstanceSnapshot(*values)
        return self._view

    def _empty_snapshot(self) -> InstanceSnapshot:
        info = self.info
        return InstanceSnapshot(
            info.instance_id,
            num_free_blocks=info.num_total_blocks,
            num_total_blocks=info.num_total_blocks,
            block_size=info.block_size,
            role=info.role,
            incarnation=info.incarnation,
        )


class Registry:
    """Live instances by instance id, in registration order (routing sees them in that order)."""

    def __init__(self, timeout_s: float = 1.0, control_token: str | None = None):
        self.timeout_s = timeout_s
        self.control_token = control_token
        self._by_id: dict[str, InstanceRecord] = {}
        self._by_peer: dict[bytes, InstanceRecord] = {}
        self.version = 0  # +1 on every registration or removal: callers cache live() by it
        self.num_refused = 0  # REGISTERs with a wrong or missing control token

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, instance_id: str) -> bool:
        return instance_id in self._by_id

    def get(self, instance_id: str) -> InstanceRecord | None:
        return self._by_id.get(instance_id)

    def by_peer(self, peer: bytes) -> InstanceRecord | None:
        return self._by_peer.get(peer)

    def live(self) -> list[InstanceRecord]:
        return list(self._by_id.values())

    def is_authorized(self, token: str | None) -> bool:
        if self.control_token is None:
            return True
        ok = token is not None and hmac.compare_digest(token.encode(), self.control_token.encode())
        self.num_refused += not ok
        return ok

    def register(
        self, peer: bytes, info: WorkerInfo, now: float
    ) -> tuple[InstanceRecord, InstanceRecord | None]:
        """(the new record, the record it replaces: an older incarnation, to be failed)."""
        old = self._by_id.get(info.instance_id)
        if old is not None:
            self.remove(old.instance_id)
        record = InstanceRecord(info, peer, now)
        self._by_id[info.instance_id] = record
        self._by_peer[peer] = record
        self.version += 1
        return record, old

    def heard(self, record: InstanceRecord, status: WorkerStatus | None, now: float) -> None:
        record.last_heard_s = now
        if status is not None:
            record.set_status(status)

    def remove(self, instance_id: str) -> InstanceRecord | None:
        record = self._by_id.pop(instance_id, None)
        if record is not None:
            self._by_peer.pop(record.peer, None)
            self.version += 1
        return record

    def expired(self, now: float) -> list[InstanceRecord]:
        """Live records not heard from for longer than `timeout_s` (not removed here)."""
        return [r for r in self._by_id.values() if now - r.last_heard_s > self.timeout_s]
