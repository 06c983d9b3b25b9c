"""The controller's routing inputs, without processes: memoized prompt hashes, the pending
overlay over the prefix index, and the KV message sequencing that detects gaps."""

from __future__ import annotations

import random

from pdserve.cluster import kv_sync
from pdserve.cluster.block_hasher import BlockHasher
from pdserve.cluster.pending import PendingPrefixes
from pdserve.cluster.prefix_index import PrefixIndex
from pdserve.cluster.registry import InstanceRecord
from pdserve.engine.protocol import WorkerInfo
from pdserve.hashing import hash_blocks
from pdserve.types import BlockStored


def record(instance_id: str = "a") -> InstanceRecord:
    return InstanceRecord(WorkerInfo(instance_id, "1", 0, "fake", 64, 4, 32, (), 100), b"a/1", 0.0)


def test_block_hasher_equals_hash_blocks_with_and_without_its_memo():
    rng = random.Random(0)
    tokens = [rng.randrange(1000) for _ in range(203)]
    hasher = BlockHasher(16)
    assert hasher(tokens) == hash_blocks(tokens, 16)
    assert hasher(tokens[:50]) == hash_blocks(tokens[:50], 16)  # from the memo
    assert hasher(tokens[:15]) == []


def test_a_prompt_on_its_way_counts_as_cached_until_removed():
    index, pending = PrefixIndex(), PendingPrefixes()
    index.apply("a", 0, [BlockStored(1, 0, 4)])
    pending.add("b", [1, 2, 3])
    assert pending.matched(index, [1, 2, 3, 4]) == {"a": 1, "b": 3}
    pending.remove("b", [1, 2, 3])
    assert pending.matched(index, [1, 2, 3, 4]) == {"a": 1}
    assert len(pending) == 0


def test_kv_messages_apply_in_order_skip_duplicates_and_report_gaps():
    index, rec = PrefixIndex(), record()
    stored = [BlockStored(h, 0, 4) for h in (10, 11, 12)]
    assert kv_sync.apply_kv(index, rec, 0, stored[:2])
    assert kv_sync.apply_kv(index, rec, 1, stored[1:])  # overlaps: only event 2 is new
    assert rec.kv_next_seq == 3 and sorted(index.hashes_of("a")) == [10, 11, 12]
    assert not kv_sync.apply_kv(index, rec, 5, stored[:1])  # events 3 and 4 were lost
    assert kv_sync.is_behind(rec, 5)


def test_a_full_resync_replaces_the_instance_entries():
    index, rec = PrefixIndex(), record()
    kv_sync.apply_kv(index, rec, 0, [BlockStored(10, 0, 4)])
    rec.is_replaying = True
    kv_sync.apply_replay(index, rec, {"next_seq": 9, "cached_hashes": [20, 21]}, None)
    assert sorted(index.hashes_of("a")) == [20, 21]
    assert rec.kv_next_seq == 9 and not rec.is_replaying
