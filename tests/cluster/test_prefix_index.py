"""The global prefix index: numbered event batches, gaps refused, resync, longest-prefix walk."""

from __future__ import annotations

from pdserve.cluster.prefix_index import PrefixIndex
from pdserve.hashing import NONE_HASH
from pdserve.types import BlockRemoved, BlockStored


def stored(*hashes: int) -> list[BlockStored]:
    parents = (NONE_HASH, *hashes[:-1])
    return [BlockStored(h, p, 16) for h, p in zip(hashes, parents)]


def test_longest_prefix_walks_the_chain_per_instance():
    index = PrefixIndex()
    assert index.apply("a", 0, stored(1, 2, 3))
    assert index.apply("b", 0, stored(1, 2))
    assert index.longest_prefix([1, 2, 3, 4]) == {"a": 3, "b": 2}
    assert index.longest_prefix([9, 1]) == {}


def test_longest_prefix_keeps_first_block_order_as_instances_drop_out():
    index = PrefixIndex()
    index.apply("c", 0, stored(1, 2, 3, 4))
    index.apply("a", 0, stored(1))
    index.apply("b", 0, stored(1, 2, 3))
    index.apply("a", 1, [BlockStored(3, 2, 16)])  # holds block 3 but not block 2: stops at 1
    matched = index.longest_prefix([1, 2, 3, 4, 5])
    assert list(matched.items()) == [("c", 4), ("a", 1), ("b", 3)]
    assert index.longest_prefix([]) == {}


def test_a_hole_in_the_chain_stops_the_match():
    index = PrefixIndex()
    index.apply("a", 0, stored(1, 2, 3))
    index.apply("a", 1, [BlockRemoved(2)])
    assert index.longest_prefix([1, 2, 3]) == {"a": 1}


def test_gap_in_sequence_numbers_is_refused_and_changes_nothing():
    index = PrefixIndex()
    assert index.apply("a", 0, stored(1))
    assert not index.apply("a", 2, stored(5))
    assert index.holders(5) == {}
    assert index.expected_seq_no("a") == 1


def test_duplicate_batch_is_refused():
    index = PrefixIndex()
    assert index.apply("a", 0, stored(1))
    assert not index.apply("a", 0, [BlockRemoved(1)])
    assert index.holders(1) == {"a": "device"}


def test_replace_instance_resyncs_after_a_gap():
    index = PrefixIndex()
    index.apply("a", 0, stored(1, 2))
    index.replace_instance("a", [1, 7], seq_no=5)
    assert index.hashes_of("a") == [1, 7]
    assert index.apply("a", 5, [BlockRemoved(7)])
    assert index.num_blocks("a") == 1


def test_drop_instance_forgets_its_blocks_only():
    index = PrefixIndex()
    index.apply("a", 0, stored(1, 2))
    index.apply("b", 0, stored(1))
    index.drop_instance("a")
    assert index.longest_prefix([1, 2]) == {"b": 1}
    assert len(index) == 1
    assert index.expected_seq_no("a") == 0


def test_tier_is_kept_per_instance():
    index = PrefixIndex()
    index.apply("a", 0, [BlockStored(1, NONE_HASH, 16, tier="cpu")])
    index.apply("b", 0, [BlockStored(1, NONE_HASH, 16)])
    assert index.holders(1) == {"a": "cpu", "b": "device"}


def test_index_equals_the_schedulers_cache_after_evictions():
    from pdserve.config import SchedulerConfig
    from pdserve.sched.scheduler import Scheduler
    from pdserve.sim.instance import CostExecutor
    from pdserve.types import Request, SamplingParams

    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=64), num_blocks=12, block_size=4)
    executor, index = CostExecutor(step_time=lambda plan: 0.01), PrefixIndex()
    for k in range(6):  # 6 prompts of 5 blocks into 12 blocks: evictions
        prompt = tuple(range(100 * k, 100 * k + 20))
        sched.add_request(Request(f"r{k}", prompt, SamplingParams(2, ignore_eos=True)))
        step = 0
        while sched.has_unfinished:
            plan = sched.schedule(0.0)
            sched.update(plan, executor.execute(plan), 0.0)
            step += 1
        assert index.apply("a", k, sched.drain_kv_events())
    assert sorted(index.hashes_of("a")) == sorted(sched.kv.prefix_cache.cached_hashes())
