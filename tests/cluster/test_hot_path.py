"""The controller's per-request shortcuts give exactly the answers of their plain definitions:
the pending overlay's bisection, the index walk, the hash memo, the snapshot view, the cached
fleet list; and the plain ZMQ socket delivers, sends and notices an unreachable worker."""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import replace

import pytest
import zmq

from pdserve.cluster.block_hasher import BlockHasher
from pdserve.cluster.controller import Controller, ControllerConfig
from pdserve.cluster.cost_model import estimate_ttft_s
from pdserve.cluster.pending import PendingPrefixes
from pdserve.cluster.policies import PolicyConfig, Ttft
from pdserve.cluster.prefix_index import PrefixIndex
from pdserve.cluster.registry import InstanceRecord, Registry
from pdserve.cluster.worker_link import make_packer, pack_submit
from pdserve.engine import protocol as P
from pdserve.engine.client import EngineDeadError
from pdserve.hashing import hash_blocks
from pdserve.types import BlockRemoved, BlockStored, FinishReason, InstanceSnapshot, TokenEvent
from tests.cluster.harness import request

INSTANCES = ("a", "b", "c")


def leading(block_hashes: list[int], held) -> int:
    """The plain definition: how many leading blocks are in `held`."""
    depth = 0
    while depth < len(block_hashes) and block_hashes[depth] in held:
        depth += 1
    return depth


def random_prompt(rng: random.Random, heads: list[list[int]]) -> list[int]:
    head = rng.choice(heads)[: rng.randrange(0, 33)]
    return head + [rng.randrange(3) for _ in range(rng.randrange(0, 9))]


def test_pending_and_index_match_equals_a_walk_over_each_instances_blocks():
    rng = random.Random(0)
    heads = [[rng.randrange(3) for _ in range(32)] for _ in range(3)]
    for _ in range(300):
        index, pending = PrefixIndex(), PendingPrefixes()
        cached = {i: set(hash_blocks(random_prompt(rng, heads), 4)) for i in INSTANCES}
        for i, hashes in cached.items():
            hashes.difference_update(rng.sample(sorted(hashes), min(len(hashes), 1)))  # a hole
            index.apply(i, 0, [BlockStored(h, 0, 4) for h in hashes])
        routed = [(rng.choice(INSTANCES), hash_blocks(random_prompt(rng, heads), 4))
                  for _ in range(rng.randrange(0, 8))]  # fmt: skip
        for i, hashes in routed:
            pending.add(i, hashes)
        for i, hashes in routed[: len(routed) // 2]:
            pending.remove(i, hashes)
        on_way = {i: set() for i in INSTANCES}
        for i, hashes in routed[len(routed) // 2 :]:
            on_way[i].update(hashes)
        query = hash_blocks(random_prompt(rng, heads), 4)
        expected = {i: max(leading(query, cached[i]), leading(query, on_way[i])) for i in INSTANCES}
        assert pending.matched(index, query) == {i: n for i, n in expected.items() if n}
        assert index.longest_prefix(query) == {
            i: n for i in INSTANCES if (n := leading(query, cached[i]))
        }


def test_pending_entries_leave_with_their_last_request():
    pending, index = PendingPrefixes(), PrefixIndex()
    pending.add("a", [1, 2, 3])
    pending.add("a", [1, 2])
    pending.remove("a", [1, 2, 3])
    assert pending.matched(index, [1, 2, 3]) == {"a": 2} and len(pending) == 2
    pending.remove("a", [1, 2])
    assert pending.matched(index, [1, 2, 3]) == {} and len(pending) == 0


def test_index_keeps_first_block_order_after_removals():
    index = PrefixIndex()
    index.apply("b", 0, [BlockStored(h, 0, 4) for h in (1, 2, 3)])
    index.apply("a", 0, [BlockStored(h, 0, 4) for h in (1, 2)])
    index.apply("b", 1, [BlockRemoved(2)])
    assert list(index.longest_prefix([1, 2, 3]).items()) == [("b", 1), ("a", 2)]


def test_block_hasher_memo_is_exact_and_bounded():
    rng = random.Random(1)
    hasher = BlockHasher(4, max_entries=40)
    heads = [[rng.randrange(5) for _ in range(40)] for _ in range(4)]
    for _ in range(200):
        tokens = random_prompt(rng, heads)
        assert hasher(tokens) == hash_blocks(tokens, 4)
        assert hasher(tuple(tokens)) == hash_blocks(tokens, 4)
        assert len(hasher._memo) <= 40 + len(tokens) // 4


def test_snapshot_view_is_the_heartbeat_snapshot_with_the_controllers_queue():
    info = P.WorkerInfo("a", "1", 0, "fake", 64, 4, 32, (), 100)
    record = InstanceRecord(info, b"a/1", 0.0)
    snap = InstanceSnapshot("a", 2, 3, 40, 7, 20, 5, 32, 4, 0.01, 64, 9, "fused", "1", 1.5)
    record.set_status(P.WorkerStatus(snap, P.EngineStats(), 0))
    record.add_unstarted("r1", 30)
    record.add_unstarted("r2", 12)
    expected = replace(snap, num_waiting=2, num_waiting_tokens=42, num_running_tokens=3)
    assert record.snapshot() == expected
    record.started("r1")
    assert record.snapshot() == replace(expected, num_waiting=1, num_waiting_tokens=12)


def test_registry_version_moves_on_every_join_and_leave():
    registry = Registry()
    info = P.WorkerInfo("a", "1", 0, "fake", 64, 4, 32, (), 100)
    registry.register(b"a/1", info, 0.0)
    registry.register(b"a/2", replace(info, incarnation="2"), 0.0)  # replaces a/1
    assert registry.version == 3
    registry.remove("a")
    registry.remove("a")  # gone already: no change
    assert registry.version == 4


class RawWorker:
    """A worker played by the test over a DEALER socket: no process, no scheduler."""

    def __init__(self, address: str, instance_id: str = "raw-0"):
        self.info = P.WorkerInfo(instance_id, "1", os.getpid(), "fake", 64, 4, 32, (), 100)
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, f"{instance_id}/1".encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.send(P.REGISTER, P.encode_info(self.info), None)

    def send(self, msg_type: str, *body) -> None:
        self.sock.send(P.pack(msg_type, *body))

    async def recv(self, timeout_s: float = 5.0) -> tuple[str, tuple]:
        for _ in range(int(timeout_s / 0.01)):
            if self.sock.poll(0):
                return P.unpack(self.sock.recv())
            await asyncio.sleep(0.01)
        raise TimeoutError("nothing from the controller")


def test_a_raw_worker_registers_gets_the_submit_and_streams_tokens_back():
    async def main():
        controller = Controller(ControllerConfig(routing="ttft", heartbeat_timeout_s=60))
        controller.start()
        worker = RawWorker(controller.address)
        try:
            await controller.wait_for_instances(1, 5)
            events = []

            async def consume():
                async for event in controller.generate(request("r1", range(10), max_tokens=2)):
                    events.append(event)

            consumer = asyncio.create_task(consume())
            msg_type, body = await worker.recv()
            submitted = P.decode_request(body[0])
            assert msg_type == P.SUBMIT and submitted.prompt_token_ids == tuple(range(10))
            assert submitted.block_hashes == tuple(hash_blocks(range(10), 4))  # worker: no hashing
            first = TokenEvent("r1", (7,), num_prompt_tokens=10)
            last = TokenEvent("r1", (8,), FinishReason.LENGTH, num_prompt_tokens=10)
            worker.send(P.TOKENS, [P.encode_event(first)])
            worker.send(P.TOKENS, [P.encode_event(last)])
            await asyncio.wait_for(consumer, 5)
            assert [e.new_token_ids for e in events] == [(7,), (8,)]
            assert events[-1].finish_reason is FinishReason.LENGTH
            assert controller.num_unstarted == 0 and len(controller.pending) == 0
        finally:
            worker.sock.close()
            await controller.close(shutdown_workers=False)

    asyncio.run(main())


def test_a_worker_whose_socket_is_gone_is_taken_out_on_the_next_send():
    async def main():
        config = ControllerConfig(routing="round_robin", heartbeat_timeout_s=60)
        controller = Controller(config)
        controller.start()
        worker = RawWorker(controller.address)
        try:
            await controller.wait_for_instances(1, 5)
            worker.sock.close()
            await asyncio.sleep(1.0)  # the ROUTER drops the peer once the connection closes

            async def run():
                async for _ in controller.generate(request("r1", range(10))):
                    pass

            with pytest.raises(EngineDeadError, match=r"the request \(failed on raw-0\)$"):
                await asyncio.wait_for(run(), 10)  # heartbeats would take 60 s
            assert len(controller.registry) == 0
            assert controller.metrics.failed._value.get() == 1
        finally:
            await controller.close(shutdown_workers=False)

    asyncio.run(main())


def test_a_submit_carries_block_hashes_and_one_without_them_still_decodes():
    req = request("r1", range(9))
    encoded = P.encode_request(req, [11, 12])
    assert P.decode_request(encoded).block_hashes == (11, 12)
    assert P.decode_request(P.encode_request(req)).block_hashes == ()
    assert P.decode_request(encoded[:7]) == req  # a sender from before the field


def test_a_submit_with_packed_blocks_is_byte_for_byte_the_protocols_frame():
    rng = random.Random(3)
    hasher, packer = BlockHasher(4, max_entries=64), make_packer()
    heads = [[rng.choice((0, 7, 127, 128, 255, 256, 65535, 65536, 2**31)) for _ in range(40)]
             for _ in range(3)]  # fmt: skip
    for i in range(300):
        tokens = random_prompt(rng, heads)
        rid = "r" * rng.randrange(1, 40) + str(i)  # fixstr and str8 request ids
        req = request(rid, tokens, max_tokens=rng.randrange(1, 70000), seed=rng.randrange(99))
        hashes, packed = hasher.hash_and_pack(req.prompt_token_ids)
        assert hashes == hash_blocks(tokens, 4)
        frame = pack_submit(packer, req, hashes, packed, 4)
        assert frame == P.pack(P.SUBMIT, P.encode_request(req, hashes))


def test_ttft_estimates_equal_the_cost_models_over_new_and_reused_snapshots():
    rng = random.Random(4)
    policy, reference = Ttft(PolicyConfig(max_batched_tokens=512)), Ttft(PolicyConfig(512))
    snaps = {}
    for step in range(400):
        for i in range(3):
            if i not in snaps or rng.random() < 0.5:
                snaps[i] = InstanceSnapshot(
                    f"i{i}", num_waiting=rng.randrange(3), num_running=rng.randrange(600),
                    num_waiting_tokens=rng.randrange(3000), num_running_tokens=rng.randrange(900),
                    num_free_blocks=500, num_total_blocks=1000, block_size=16,
                    step_time_s=0.01 + rng.random() / 100, step_tokens=rng.randrange(1, 512),
                    num_steps=step,
                )  # fmt: skip
        instances = [snaps[i] for i in range(3)]
        req = request(f"r{step}", range(rng.randrange(1, 700)))
        decision = policy.route(req, instances, 0.0)
        chosen = next(s for s in instances if s.instance_id == decision.instance_id)
        for snap in instances:  # one step model for the three (same role and kind)
            reference.observe(snap)
        model = reference.observe(chosen)
        uncached = max(len(req.prompt_token_ids), 1)
        assert decision.est_ttft_s == estimate_ttft_s(chosen, uncached, model.step_time, 512)


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_block_hasher_shared_runs_give_exactly_the_hashes_and_bytes_of_each_block(block_size):
    rng = random.Random(block_size)
    hasher, packer = BlockHasher(block_size, max_entries=rng.choice([8, 1 << 16])), make_packer()
    heads = [[rng.randrange(4) for _ in range(60)] for _ in range(4)]
    for _ in range(1500):
        tokens = rng.choice(heads)[: rng.randrange(0, 61)] + [rng.randrange(4) for _ in range(9)]
        prompt = tokens if rng.random() < 0.5 else tuple(tokens)
        full = len(tokens) // block_size * block_size
        if rng.random() < 0.5:
            assert hasher(prompt) == hash_blocks(tokens, block_size)
        else:
            hashes, packed = hasher.hash_and_pack(prompt)
            assert hashes == hash_blocks(tokens, block_size)
            assert packed == packer.pack(tokens[:full])[len(packer.pack_array_header(full)) :]


def test_block_hasher_chains_keep_no_tokens_of_unshared_prompts_and_stay_bounded():
    rng = random.Random(5)
    hasher = BlockHasher(4, max_entries=64)
    for _ in range(200):
        hasher.hash_and_pack([rng.randrange(10**6) for _ in range(40)])  # no two alike
        assert all(not tokens for tokens, *_ in hasher._chains.values())
        assert hasher._chains_size <= 64 * 4 + 4 + 2 * 40
