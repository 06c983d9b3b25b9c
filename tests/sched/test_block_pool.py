import random
from collections import OrderedDict

import pytest

from pdserve.sched.block_pool import NO_HASH, BlockPool
from pdserve.sched.prefix_cache import PrefixCache
from pdserve.types import BlockRemoved, BlockStored


def test_allocate_and_free_restores_every_block():
    pool = BlockPool(8)
    block_ids = pool.allocate(5)
    assert block_ids == [0, 1, 2, 3, 4]
    assert pool.num_free_blocks == 3
    pool.free(block_ids, tail_first=True)
    assert pool.num_free_blocks == 8
    pool.check_integrity()


def test_allocate_more_than_free_raises_and_takes_nothing():
    pool = BlockPool(4)
    pool.allocate(3)
    with pytest.raises(RuntimeError, match="asked for 2 blocks, 1 free"):
        pool.allocate(2)
    assert pool.num_free_blocks == 1
    pool.check_integrity()


def test_double_free_is_refused():
    pool = BlockPool(2)
    (block_id,) = pool.allocate(1)
    pool.free([block_id])
    with pytest.raises(RuntimeError, match="block 0 freed with ref count 0"):
        pool.free([block_id])
    pool.check_integrity()


def test_a_double_free_mid_list_keeps_the_blocks_before_it_freed():
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    pool.free([c])
    with pytest.raises(RuntimeError, match=f"block {c} freed with ref count 0"):
        pool.free([a, b, c])
    assert pool.ref_cnts == [0, 0, 0] and pool.queued_block_ids() == [c, a, b]
    pool.check_integrity()


def test_freed_tail_is_evicted_before_head():
    pool = BlockPool(4)
    cache = PrefixCache(pool, block_size=4)
    block_ids = pool.allocate(4)
    for i, block_id in enumerate(block_ids):
        cache.insert(block_id, block_hash=100 + i, parent_hash=99 + i)
    pool.free(block_ids, tail_first=True)  # tail first
    assert len(cache) == 4
    assert pool.allocate(1) == [3]  # the tail block went first
    assert cache.match([100, 101, 102, 103]) == block_ids[:3]
    assert cache.match([100, 101, 102], max_blocks=2) == block_ids[:2]
    events = cache.drain_events()
    assert events[:4] == [BlockStored(100 + i, 99 + i, 4) for i in range(4)]
    assert events[4:] == [BlockRemoved(103)]
    assert pool.block_hashes[3] == NO_HASH
    cache.check_integrity()


def test_prefix_hit_revives_cached_block_from_the_queue():
    pool = BlockPool(3)
    cache = PrefixCache(pool, block_size=2)
    (block_id,) = pool.allocate(1)
    cache.insert(block_id, 7, 0)
    pool.free([block_id])
    assert pool.num_free_blocks == 3
    pool.touch(cache.match([7]))
    assert pool.ref_cnts[block_id] == 1 and pool.num_free_blocks == 2
    pool.check_integrity()


def test_revived_block_is_skipped_by_allocation_and_requeued_at_the_tail():
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    pool.free([a, b, c])  # queue: a b c
    pool.touch([a])  # a leaves the queue (its entry goes stale)
    assert pool.queued_block_ids() == [b, c] and pool.num_free_blocks == 2
    pool.free([a])  # queue: b c a
    assert pool.queued_block_ids() == [b, c, a]
    assert pool.allocate(3) == [b, c, a]
    assert pool.num_free_blocks == 0
    pool.check_integrity()


def test_duplicate_content_stays_unpublished():
    pool = BlockPool(2)
    cache = PrefixCache(pool, block_size=2)
    a, b = pool.allocate(2)
    cache.insert(a, 5, 0)
    cache.insert(b, 5, 0)
    assert pool.block_hashes[a] == 5 and pool.block_hashes[b] == NO_HASH
    assert cache.drain_events() == [BlockStored(5, 0, 2)]
    cache.check_integrity()


def test_a_huge_pool_costs_nothing_until_used():
    pool = BlockPool(10_000_000)
    assert pool.num_free_blocks == 10_000_000 and pool.ref_cnts == []
    assert pool.allocate(3) == [0, 1, 2]
    assert pool.num_free_blocks == 10_000_000 - 3 and pool.num_touched_blocks == 3
    assert len(pool.ref_cnts) < 1000  # the per-block lists grow with use, not with the pool
    pool.check_integrity()


def test_fresh_blocks_are_used_before_cached_ones():
    pool = BlockPool(4)
    cache = PrefixCache(pool, block_size=2)
    (a,) = pool.allocate(1)
    cache.insert(a, 9, 0)
    pool.free([a])
    assert pool.allocate(3) == [1, 2, 3]  # the cached block survives
    assert cache.match([9]) == [a]


def test_events_off_evicts_the_same_blocks_silently():
    pool = BlockPool(2)
    cache = PrefixCache(pool, block_size=2)
    cache.emits_events = False
    a, b = pool.allocate(2)
    cache.insert_run([a, b], [11, 12], 0, 2)
    pool.free([b, a])
    assert pool.allocate(1) == [b]
    assert cache.cached_hashes() == [11] and cache.drain_events() == []
    cache.check_integrity()


def test_reset_forgets_only_unused_cached_blocks():
    pool = BlockPool(3)
    cache = PrefixCache(pool, block_size=2)
    a, b, c = pool.allocate(3)
    cache.insert_run([a, b, c], [1, 2, 3], 0, 3)
    pool.free([c, b])
    cache.drain_events()
    assert cache.reset() == 2
    assert cache.cached_hashes() == [1]
    assert cache.drain_events() == [BlockRemoved(2), BlockRemoved(3)]
    cache.check_integrity()


def test_long_churn_keeps_the_queue_small_and_in_eviction_order():
    """Random allocate / hit / free against a reference model (an OrderedDict queue): the same
    blocks come out in the same order, and the lazily cleaned queue list stays O(num_blocks)."""
    num_blocks = 64
    pool = BlockPool(num_blocks)
    ref_queue: OrderedDict[int, None] = OrderedDict()
    ref_refs = [0] * num_blocks
    ref_fresh = 0
    held: list[int] = []
    rng = random.Random(7)
    for step in range(20_000):
        op = rng.random()
        if op < 0.4 and pool.num_free_blocks:
            n = rng.randint(1, pool.num_free_blocks)
            want = list(range(ref_fresh, min(num_blocks, ref_fresh + n)))
            ref_fresh += len(want)
            while len(want) < n:
                want.append(ref_queue.popitem(last=False)[0])
            for block_id in want:
                ref_refs[block_id] = 1
            assert pool.allocate(n) == want
            held.extend(want)
        elif op < 0.7 and held:
            hits = rng.sample(range(ref_fresh), rng.randint(1, min(8, ref_fresh)))
            for block_id in hits:
                if ref_refs[block_id] == 0:
                    del ref_queue[block_id]
                ref_refs[block_id] += 1
            pool.touch(hits)
            held.extend(hits)
        elif held:
            rng.shuffle(held)
            k = rng.randint(1, len(held))
            freed, held = held[:k], held[k:]
            for block_id in freed:
                ref_refs[block_id] -= 1
                if ref_refs[block_id] == 0:
                    ref_queue[block_id] = None
            pool.free(freed)
        # live + at most _COMPACT_MIN stale entries, and a consumed head cut at half the list
        assert len(pool._queue) <= 2 * (num_blocks + 1024)
        if step % 200 == 0:
            pool.check_integrity()
    assert pool.queued_block_ids() == list(ref_queue)
    assert pool.ref_cnts == ref_refs
    pool.check_integrity()


def test_hot_prefix_hits_without_allocations_keep_the_queue_bounded():
    """A shared prefix hit and freed by every request, while nothing is allocated: each round
    leaves stale entries that no allocation consumes; the queue is rebuilt, order kept."""
    pool = BlockPool(8)
    block_ids = pool.allocate(8)
    pool.free(block_ids)  # queue: 0 .. 7
    for _ in range(3000):
        pool.touch([0, 1, 2, 3])
        pool.free([0, 1, 2, 3], tail_first=True)  # queue: 4 5 6 7 3 2 1 0
        assert len(pool._queue) <= 2 * (8 + 1024)
    assert pool.queued_block_ids() == [4, 5, 6, 7, 3, 2, 1, 0]
    pool.check_integrity()
    assert pool.allocate(8) == [4, 5, 6, 7, 3, 2, 1, 0]
    pool.check_integrity()
