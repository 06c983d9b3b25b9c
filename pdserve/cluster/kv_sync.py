"""Keeping the global prefix index equal to the instances' prefix caches.

Each worker numbers its KV events 0, 1, 2 ... (`first_seq` of a KV message is the number of its
first event; a heartbeat's `kv_seq` is the number the next event will carry). Messages from one
worker arrive in order, so a message starting past the expected number, or a heartbeat ahead of
it, means messages were lost: the controller asks the worker to replay from the expected number
(or, if its log no longer reaches back, for its full list of cached hashes) and drops further KV
messages until the answer, which covers them.

    expected = 7     message first_seq 7, 3 events  -> apply, expected = 10
                     message first_seq 12           -> gap: replay from 10
                     message first_seq 5, 3 events  -> duplicate: nothing
"""

from __future__ import annotations

from collections.abc import Sequence

from pdserve.cluster.prefix_index import PrefixIndex
from pdserve.cluster.registry import InstanceRecord
from pdserve.types import KVCacheEvent


def apply_kv(
    index: PrefixIndex, record: InstanceRecord, first_seq: int, events: Sequence[KVCacheEvent]
) -> bool:
    """Apply a KV message to the index; False if it shows a gap (the caller starts a replay).
    The index's own batch numbers follow ours: we hand it the number it expects."""
    if record.is_replaying:
        return True  # the replay's answer will cover this message
    expected = record.kv_next_seq
    end = first_seq + len(events)
    if first_seq > expected:
        return False
    if end <= expected:
        return True  # already applied
    iid = record.instance_id
    index.apply(iid, index.expected_seq_no(iid), events[expected - first_seq :])
    record.kv_next_seq = end
    return True


def is_behind(record: InstanceRecord, worker_kv_seq: int) -> bool:
    """A heartbeat says the worker published events the index never got."""
    return not record.is_replaying and worker_kv_seq > record.kv_next_seq


def apply_replay(index: PrefixIndex, record: InstanceRecord, reply: dict, decode) -> None:
    """Apply a `kv_replay` answer: the events from the expected number on, or a full resync."""
    record.is_replaying = False
    if "events" in reply:
        apply_kv(index, record, reply["first_seq"], [decode(e) for e in reply["events"]])
        return
    index.replace_instance(record.instance_id, reply["cached_hashes"], 0)
    record.kv_next_seq = reply["next_seq"]
