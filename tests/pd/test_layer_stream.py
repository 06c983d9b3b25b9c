"""Layer-streamed sends (engine/pd.py StreamingExecutor) in one process: a prefill engine streams
a SEND request's KV into a decode engine's reserved blocks over the in-process transport; the
last prompt chunk goes one transfer per layer while the model still runs, earlier chunks' full
blocks go once written. Outputs equal one fused engine's."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from pdserve.engine import protocol as P
from pdserve.engine.llm import LLM
from pdserve.engine.pd import KVHandoff, StreamingExecutor
from pdserve.kvxfer import Fault, FaultKind
from pdserve.kvxfer.inproc import InProcFabric, InProcTransport
from pdserve.types import FinishReason, KVRole, Request, SamplingParams

BS = 16
MAX_TOKENS = 6
TINY_MODEL = "dummy:tiny-llama"
NUM_LAYERS = 2  # of TINY_MODEL


def make_llm(**kwargs) -> LLM:
    return LLM(TINY_MODEL, max_model_len=256, num_blocks=64, block_size=BS, **kwargs)


class FlagRunner:
    """The real runner, noting whether the model is running right now."""

    def __init__(self, runner):
        self.runner = runner
        self.in_step = False

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def execute(self, plan):
        return self._run(self.runner.execute, plan)

    def launch(self, plan):  # async scheduling (GPU): the step is queued here
        return self._run(self.runner.launch, plan)

    def _run(self, step, plan):
        self.in_step = True
        try:
            return step(plan)
        finally:
            self.in_step = False


class RecordingTransport(InProcTransport):
    """In-process transport that records every send: (layer range, blocks, model running?)."""

    def __init__(self, name, fabric, runner: FlagRunner):
        super().__init__(name, fabric)
        self.runner = runner
        self.sent: list[tuple[int, int | None, int, bool]] = []
        self.block_pairs: dict[int, int] = {}  # src block id -> dst block id

    def send(self, spec):
        src, dst = list(spec.src_block_ids), list(spec.dst_block_ids)
        self.sent.append((spec.layer_start, spec.layer_end, len(src), self.runner.in_step))
        self.block_pairs.update(zip(src, dst))
        return super().send(spec)


@pytest.fixture(scope="module")
def fused():
    return make_llm()


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


@dataclass
class Pair:
    """A streaming sender and a receiver that reserved blocks for one request "r"."""

    sender: LLM
    receiver: LLM
    runner: FlagRunner
    transport: RecordingTransport
    handoff: KVHandoff
    receiver_meta: bytes
    reservation: object

    def order(self) -> None:
        order = P.KVSendOrder("r", self.receiver_meta, 0, self.reservation.block_ids)
        self.handoff.order(order)

    def run_sender(self):
        """Step the sender until the send is reported: (first token or None, [KVSendResult])."""
        first_token, results = None, []
        while not results:
            events = self.sender.core.step()
            self.handoff.on_events(events)
            first_token = next((e.new_token_ids[0] for e in events if e.new_token_ids), first_token)
            results = self.handoff.poll()
            self.sender.core.check_integrity()
        return first_token, results


def make_pair(prompt: list[int], max_num_batched_tokens: int = 2048) -> Pair:
    sender, receiver = make_llm(max_num_batched_tokens=max_num_batched_tokens), make_llm()
    fabric = InProcFabric()
    runner = FlagRunner(sender.core.executor)
    transport = RecordingTransport("prefill", fabric, runner)
    meta = transport.register(runner.kv_cache)
    receiver_meta = InProcTransport("decode", fabric).register(receiver.core.executor.kv_cache)
    handoff = KVHandoff(sender.core.scheduler, transport, meta, 5.0, NUM_LAYERS)
    sender.core.executor = StreamingExecutor(runner, runner.model, handoff)
    receive = Request("r", tuple(prompt), greedy(MAX_TOKENS), kv_role=KVRole.RECEIVE)
    receiver.core.add_request(receive)
    receiver.core.step()  # reserves the blocks
    (reservation,) = receiver.core.scheduler.drain_kv_reservations()
    sender.core.add_request(Request("r", tuple(prompt), greedy(1), kv_role=KVRole.SEND))
    return Pair(sender, receiver, runner, transport, handoff, receiver_meta, reservation)


def hand_off(prompt: list[int], max_num_batched_tokens: int = 2048):
    """One request prefilled on a streaming sender, decoded on a receiver. Returns (output token
    ids, the sender's recorded sends, whether every sent block is equal on both sides)."""
    pair = make_pair(prompt, max_num_batched_tokens)
    pair.order()
    first_token, results = pair.run_sender()
    block_ids = list(pair.reservation.block_ids)
    assert [(r.is_ok, r.num_blocks) for r in results] == [(True, len(block_ids))]
    assert pair.sender.core.scheduler.sending == {}  # released once every transfer landed
    pairs = pair.transport.block_pairs
    src_ids, dst_ids = list(pairs), list(pairs.values())
    assert dst_ids == block_ids
    dst_cache = pair.receiver.core.executor.kv_cache
    is_equal = torch.equal(pair.runner.kv_cache[:, src_ids], dst_cache[:, dst_ids])
    receiver = pair.receiver.core
    events = receiver.scheduler.finish_receiving("r", first_token)
    while receiver.has_unfinished:
        events += receiver.step()
        receiver.check_integrity()
    return [t for e in events for t in e.new_token_ids], pair.transport.sent, is_equal


def test_one_chunk_prompt_streams_one_transfer_per_layer_during_the_step(fused):
    prompt = [(13 * j) % 450 + 2 for j in range(40)]  # 3 blocks, one chunk
    tokens, sent, is_equal = hand_off(prompt)
    assert tokens == fused.generate([prompt], greedy(MAX_TOKENS))[0].token_ids
    assert is_equal
    # (layer_start, layer_end, blocks, posted while the model ran)
    assert sent == [(0, 1, 3, True), (1, 2, 3, True)]


def test_chunked_prompt_sends_written_blocks_then_streams_the_last_chunk(fused):
    prompt = [(17 * j) % 450 + 2 for j in range(72)]  # 5 blocks in chunks of 32, 32, 8 tokens
    tokens, sent, is_equal = hand_off(prompt, max_num_batched_tokens=32)
    assert tokens == fused.generate([prompt], greedy(MAX_TOKENS))[0].token_ids
    assert is_equal
    assert sent == [
        (0, None, 2, False),  # after chunk 1: blocks 0-1, all layers
        (0, None, 2, False),  # after chunk 2: blocks 2-3
        (0, 1, 1, True),  # chunk 3, layer by layer: block 4
        (1, 2, 1, True),
    ]


def test_order_after_the_prefill_sends_the_whole_prompt_at_once():
    pair = make_pair([(19 * j) % 450 + 2 for j in range(40)])
    while pair.sender.core.has_unfinished:  # prefill done, no order yet: blocks held
        pair.handoff.on_events(pair.sender.core.step())
    assert list(pair.sender.core.scheduler.sending) == ["r"]
    pair.order()
    results = pair.handoff.poll()
    assert [(r.is_ok, r.num_blocks) for r in results] == [(True, 3)]
    assert pair.transport.sent == [(0, None, 3, False)]


class OrderAfterLaunch:
    """The sender's executor, with the order arriving right after a step was launched, before
    its outputs are collected: where a GPU worker's loop reads messages under async scheduling."""

    def __init__(self, inner, order):
        self.inner, self.order = inner, order

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def execute(self, plan):
        return self._then_order(self.inner.execute(plan))

    def launch(self, plan):
        return self._then_order(self.inner.launch(plan))

    def _then_order(self, out):
        if self.order is not None:
            self.order, order = None, self.order
            order()
        return out


def test_order_between_the_last_chunks_launch_and_its_outputs_sends_when_the_prefill_ends():
    prompt = [(31 * j) % 450 + 2 for j in range(40)]  # 3 blocks, one chunk
    pair = make_pair(prompt)
    pair.sender.core.executor = OrderAfterLaunch(pair.sender.core.executor, pair.order)
    results = []
    for _ in range(4):  # the prefill ends in the first step; the send is reported at once
        events = pair.sender.core.step()
        pair.handoff.on_events(events)
        if results := pair.handoff.poll():
            break
    assert [(r.is_ok, r.num_blocks) for r in results] == [(True, 3)]
    assert pair.transport.sent == [(0, None, 3, False)]  # all of it, once the outputs came
    assert pair.sender.core.scheduler.sending == {}
    pair.sender.core.check_integrity()


def test_a_failed_layer_transfer_fails_the_send_once_the_prefill_ends():
    pair = make_pair([(23 * j) % 450 + 2 for j in range(72)], max_num_batched_tokens=32)
    pair.transport.inject_fault(Fault(FaultKind.TRUNCATE, "r"))  # the first transfer
    pair.order()
    first_token, results = pair.run_sender()
    assert first_token is not None  # the prefill itself went on
    assert [(r.is_ok, r.error) for r in results] == [(False, "transfer failed")]
    assert len(pair.transport.sent) == 1  # nothing more is posted once a transfer failed
    assert pair.sender.core.scheduler.sending == {}
    assert pair.sender.core.scheduler.kv.num_free_blocks == 64


def test_abort_while_streaming_frees_the_request_and_reports_the_send_failed():
    pair = make_pair([(29 * j) % 450 + 2 for j in range(72)], max_num_batched_tokens=32)
    pair.order()
    pair.handoff.on_events(pair.sender.core.step())  # chunk 1: blocks 0-1 posted after it
    pair.handoff.abort("r", FinishReason.ABORT)
    results = pair.handoff.poll()
    assert [(r.is_ok, r.error) for r in results] == [(False, "aborted")]
    assert pair.transport.sent == [(0, None, 2, False)]
    pair.sender.core.check_integrity()
    assert pair.sender.core.scheduler.kv.num_free_blocks == 64
    assert not pair.handoff.sends
