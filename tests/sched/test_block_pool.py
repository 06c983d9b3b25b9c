import pytest

from pdserve.sched.block_pool import BlockPool
from pdserve.sched.prefix_cache import PrefixCache
from pdserve.types import BlockRemoved, BlockStored


def test_allocate_and_free_restores_every_block():
    pool = BlockPool(8)
    blocks = pool.allocate(5)
    assert [b.block_id for b in blocks] == [0, 1, 2, 3, 4]
    assert pool.num_free_blocks == 3
    pool.free(reversed(blocks))
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
    (block,) = pool.allocate(1)
    pool.free([block])
    with pytest.raises(RuntimeError, match="ref count 0"):
        pool.free([block])


def test_freed_tail_is_evicted_before_head():
    pool = BlockPool(4)
    cache = PrefixCache(pool, block_size=4)
    blocks = pool.allocate(4)
    for i, block in enumerate(blocks):
        cache.insert(block, block_hash=100 + i, parent_hash=99 + i)
    pool.free(reversed(blocks))  # tail first
    assert len(cache) == 4
    (reused,) = pool.allocate(1)
    assert reused.block_id == 3  # the tail block went first
    assert cache.match([100, 101, 102, 103]) == blocks[:3]
    events = cache.drain_events()
    assert events[:4] == [BlockStored(100 + i, 99 + i, 4) for i in range(4)]
    assert events[4:] == [BlockRemoved(103)]
    pool.check_integrity()
    cache.check_integrity()


def test_prefix_hit_revives_cached_block_from_the_queue():
    pool = BlockPool(3)
    cache = PrefixCache(pool, block_size=2)
    (block,) = pool.allocate(1)
    cache.insert(block, 7, 0)
    pool.free([block])
    assert pool.num_free_blocks == 3
    pool.touch(cache.match([7]))
    assert block.ref_cnt == 1 and pool.num_free_blocks == 2
    pool.check_integrity()


def test_duplicate_content_stays_unpublished():
    pool = BlockPool(2)
    cache = PrefixCache(pool, block_size=2)
    a, b = pool.allocate(2)
    cache.insert(a, 5, 0)
    cache.insert(b, 5, 0)
    assert a.block_hash == 5 and b.block_hash is None
    cache.check_integrity()


def test_a_huge_pool_costs_nothing_until_used():
    pool = BlockPool(10_000_000)
    assert pool.num_free_blocks == 10_000_000 and pool.blocks == []
    assert [b.block_id for b in pool.allocate(3)] == [0, 1, 2]
    assert pool.num_free_blocks == 10_000_000 - 3
    pool.check_integrity()


def test_fresh_blocks_are_used_before_cached_ones():
    pool = BlockPool(4)
    cache = PrefixCache(pool, block_size=2)
    (a,) = pool.allocate(1)
    cache.insert(a, 9, 0)
    pool.free([a])
    assert [b.block_id for b in pool.allocate(3)] == [1, 2, 3]  # the cached block survives
    assert cache.match([9]) == [a]
