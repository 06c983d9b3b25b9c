"""The worker protocol: messages between one engine worker and whoever drives it (the server's
client for `pdserve serve`, the cluster controller for a fleet). Torch-free.

Transport: ZeroMQ, one DEALER socket in the worker connected to the driver's ROUTER socket; the
worker's routing identity is `"<instance_id>/<incarnation>"`, so a restarted worker is a new peer.
Every frame is msgpack of `[type, body]`; dataclasses travel as lists of their fields in order.

    driver -> worker                          worker -> driver
    SUBMIT   Request                          PROGRESS   stage text while loading
    ABORT    [request_id...], reason          REGISTER   WorkerInfo, control token (ready)
    CALL     call_id, op, args -> REPLY       FAILED     error text (could not start)
    SHUTDOWN                                  TOKENS     [TokenEvent...] of one step
    KV_SEND  KVSendOrder (prefill side)       REJECT     request_id, error (can never run)
    KV_RECEIVED request_id, first token|None  KV         first_seq, [BlockStored|BlockRemoved...]
             (decode side)                    HEARTBEAT  WorkerStatus, every heartbeat_s
                                              REPLY      call_id, ok, value | error text
                                              KV_RESERVED [KVReservation...] (decode side)
                                              KV_SENT    [KVSendResult...] (prefill side)

CALL ops: "status" -> WorkerStatus, "check_integrity" -> None (error text if broken),
"kv_replay" {from_seq} -> KV events from `from_seq` on, or the full cached-hash list if the log
no longer reaches back that far. PD hand-off (engine/pd.py): "kv_status" -> dict of held
and in-flight request ids and transport counters; "kv_fault" {kind, request_id, delay_s,
keep_fraction, count} -> None (tests: inject a kvxfer fault into the next matching sends).

PD hand-off of one request (see engine/pd.py for the worker half, cluster/pd_router.py for the
driver half):

    driver              decode worker                      prefill worker
    SUBMIT(RECEIVE) ->  reserves blocks
                    <-  KV_RESERVED(rid, cached, blocks)
    KV_SEND, SUBMIT(SEND, max_tokens=1) ---------------->  prefill; first token in TOKENS;
                                                           blocks held (lease); push KV
                                                           into the reserved blocks (kvxfer)
                    <------------------------------------  KV_SENT(rid, ok, ...); blocks freed
    KV_RECEIVED(rid, first token if ok else None) ->  decode continues (None: recompute)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import msgpack

from pdserve.types import (
    BlockRemoved,
    BlockStored,
    FinishReason,
    InstanceSnapshot,
    KVCacheEvent,
    KVReservation,
    KVRole,
    Logprob,
    Request,
    SamplingParams,
    TokenEvent,
)

# driver -> worker
SUBMIT, ABORT, CALL, SHUTDOWN = "submit", "abort", "call", "shutdown"
KV_SEND, KV_RECEIVED = "kv_send", "kv_received"
# worker -> driver
PROGRESS, REGISTER, FAILED, TOKENS, REJECT, KV, HEARTBEAT, REPLY = (
    "progress", "register", "failed", "tokens", "reject", "kv", "heartbeat", "reply"
)  # fmt: skip
KV_RESERVED, KV_SENT = "kv_reserved", "kv_sent"


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker announces once its engine is ready to take requests."""

    instance_id: str
    incarnation: str  # new on every start: a restarted worker re-registers under a new one
    pid: int
    model: str  # the model spec the worker loaded (path or dummy:<shape>)
    max_model_len: int
    block_size: int
    num_total_blocks: int
    eos_token_ids: tuple[int, ...]
    vocab_size: int
    role: str = "fused"  # "fused" | "prefill" | "decode"
    kv_meta: bytes = b""  # kvxfer metadata of its registered KV cache; empty: no transport


@dataclass(frozen=True, slots=True)
class KVSendOrder:
    """Push a SEND request's prompt KV into a decode instance's reserved blocks once its prefill
    is done: blocks from `num_cached_tokens // block_size` on (the receiver's cached head is
    not sent) go into `dst_block_ids`, in order. `peer_meta` is the receiver's
    WorkerInfo.kv_meta (the sender adds the peer once and remembers it)."""

    request_id: str
    peer_meta: bytes
    num_cached_tokens: int
    dst_block_ids: tuple[int, ...]
    # Remote prefix pull: not a SEND request's blocks but the cached blocks of these leading
    # prompt block hashes, pinned by the sender while they move (engine/pd.py, cluster/pull.py).
    block_hashes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class KVSendResult:
    """How one hand-off ended on the sender. Its blocks are released either way. `first_token_id`
    is what the prefill sampled (None when it never finished, e.g. aborted)."""

    request_id: str
    is_ok: bool
    num_blocks: int
    num_bytes: int
    duration_s: float  # from posting the transfer to DONE/FAILED
    first_token_id: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Monotonic counters of one worker since it started (sum them over a fleet)."""

    prefix_queries: int = 0  # tokens looked up in the prefix cache
    prefix_hits: int = 0  # tokens found there
    num_preemptions: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    num_steps: int = 0
    finished: dict[str, int] = field(default_factory=dict)  # finish reason -> requests
    # Time from arrival to first schedule; counts per bucket of metrics.QUEUE_TIME_BUCKETS_S,
    # last entry = over the last bound (+Inf).
    queue_time_counts: tuple[int, ...] = ()
    queue_time_sum_s: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """A worker's load (snapshot), counters and KV event position, as of `snapshot.now_s`."""

    snapshot: InstanceSnapshot
    stats: EngineStats
    kv_seq: int  # sequence number the next KV event will carry


# ---- encoding --------------------------------------------------------------------------------


def pack(msg_type: str, *body: Any) -> bytes:
    return msgpack.packb([msg_type, list(body)], use_bin_type=True)


def unpack(frame: bytes) -> tuple[str, tuple]:
    """(type, body). Arrays come back as tuples, as the frozen dataclasses hold them."""
    msg_type, body = msgpack.unpackb(frame, raw=False, use_list=False, strict_map_key=False)
    return msg_type, body


def _flat(obj) -> list:
    return [getattr(obj, f.name) for f in fields(obj)]


def encode_info(info: WorkerInfo) -> list:
    return _flat(info)


def decode_info(data) -> WorkerInfo:
    return WorkerInfo(*data)


def encode_request(req: Request, block_hashes: Sequence[int] | None = None) -> list:
    """`block_hashes` (default: the request's own) are its prompt's chained block hashes at
    the receiving instance's block size, when the sender computed them: the worker skips
    hashing the prompt (sched/request.py uses them when their number fits)."""
    hashes = req.block_hashes if block_hashes is None else block_hashes
    return [req.request_id, req.prompt_token_ids, _flat(req.sampling), req.arrival_s,
            req.priority, req.eos_token_ids, req.kv_role and req.kv_role.value, hashes]  # fmt: skip


def decode_request(data) -> Request:
    rid, prompt, sampling, arrival_s, priority, eos, *rest = data
    role = KVRole(rest[0]) if rest and rest[0] else None
    hashes = tuple(rest[1]) if len(rest) > 1 else ()
    return Request(rid, prompt, SamplingParams(*sampling), arrival_s, priority, eos, role, hashes)


def encode_kv_order(order: KVSendOrder) -> list:
    return _flat(order)


def decode_kv_order(data) -> KVSendOrder:
    return KVSendOrder(*data)


def encode_kv_result(result: KVSendResult) -> list:
    return _flat(result)


def decode_kv_result(data) -> KVSendResult:
    return KVSendResult(*data)


def encode_reservation(res: KVReservation) -> list:
    return _flat(res)


def decode_reservation(data) -> KVReservation:
    return KVReservation(*data)


def _encode_logprob(lp: Logprob | None):
    return None if lp is None else [lp.token_id, lp.logprob, lp.rank, lp.top]


def _decode_logprob(data) -> Logprob | None:
    return None if data is None else Logprob(*data)


def encode_event(ev: TokenEvent) -> list:
    prompt = ev.prompt_logprobs
    return [
        ev.request_id, ev.new_token_ids, ev.finish_reason and ev.finish_reason.value,
        [_encode_logprob(lp) for lp in ev.logprobs],
        None if prompt is None else [_encode_logprob(lp) for lp in prompt],
        ev.num_prompt_tokens, ev.num_cached_tokens, ev.error,
    ]  # fmt: skip


def decode_event(data) -> TokenEvent:
    rid, ids, reason, logprobs, prompt, num_prompt, num_cached, error = data
    return TokenEvent(
        rid, ids, reason and FinishReason(reason), tuple(_decode_logprob(x) for x in logprobs),
        None if prompt is None else tuple(_decode_logprob(x) for x in prompt),
        num_prompt, num_cached, error,
    )  # fmt: skip


def encode_kv_event(ev: KVCacheEvent) -> list:
    if isinstance(ev, BlockStored):
        return ["stored", ev.block_hash, ev.parent_hash, ev.num_tokens, ev.tier]
    return ["removed", ev.block_hash, ev.tier]


def decode_kv_event(data) -> KVCacheEvent:
    return BlockStored(*data[1:]) if data[0] == "stored" else BlockRemoved(*data[1:])


def encode_status(status: WorkerStatus) -> list:
    return [_flat(status.snapshot), _flat(status.stats), status.kv_seq]


def decode_status(data) -> WorkerStatus:
    snapshot, stats, kv_seq = data
    return WorkerStatus(InstanceSnapshot(*snapshot), EngineStats(*stats), kv_seq)
