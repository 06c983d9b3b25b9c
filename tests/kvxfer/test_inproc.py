"""The in-process transport: exactly the spec'd blocks and layers move; faults and timeouts end
in FAILED; malformed specs are refused. Time is a fake clock the tests move."""

import pytest
import torch

from pdserve.kvxfer import Fault, FaultKind, TransferSpec, TransferStatus, make_transport
from pdserve.kvxfer.inproc import InProcFabric, InProcTransport

from .kv_helpers import BLOCK_BYTES, NUM_LAYERS, POISON, assert_moved_exactly, kv_cache


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def pair():
    """(prefill transport, its cache, decode cache, clock); prefill knows decode as a peer."""
    fabric, clock = InProcFabric(), Clock()
    prefill = InProcTransport("prefill", fabric, timeout_s=1.0, clock=clock)
    decode = InProcTransport("decode", fabric, timeout_s=1.0, clock=clock)
    src, dst = kv_cache(seed=1), kv_cache(fill=POISON)
    prefill.register(src)
    assert prefill.add_peer(decode.register(dst)) == "decode"
    return prefill, src, dst, clock


def test_push_moves_exactly_the_listed_blocks(pair):
    prefill, src, dst, _ = pair
    src_before = src.clone()
    h = prefill.send(TransferSpec("r1", "decode", [2, 3, 4, 8], [5, 6, 7, 0]))
    assert h.nbytes == 4 * NUM_LAYERS * BLOCK_BYTES
    assert prefill.poll(h) is TransferStatus.DONE
    assert_moved_exactly(src, dst, [2, 3, 4, 8], [5, 6, 7, 0])
    assert torch.equal(src, src_before)


def test_a_layer_range_moves_only_those_layers(pair):
    prefill, src, dst, _ = pair
    h = prefill.send(TransferSpec("r1", "decode", [1, 2], [3, 4], layer_start=1, layer_end=2))
    assert prefill.poll(h) is TransferStatus.DONE
    assert_moved_exactly(src, dst, [1, 2], [3, 4], layers=[1])


def test_layer_by_layer_streaming_adds_up_to_the_whole_request(pair):
    prefill, src, dst, _ = pair
    handles = [
        prefill.send(TransferSpec("r1", "decode", [0, 1, 2], [7, 8, 9], layer, layer + 1))
        for layer in range(NUM_LAYERS)
    ]
    assert [prefill.poll(h) for h in handles] == [TransferStatus.DONE] * NUM_LAYERS
    assert_moved_exactly(src, dst, [0, 1, 2], [7, 8, 9])


def test_pull_reads_the_peers_blocks_into_the_local_cache(pair):
    prefill, src, dst, _ = pair
    dst.copy_(kv_cache(seed=2))
    src.fill_(POISON)
    h = prefill.send(TransferSpec("r1", "decode", [4, 5], [0, 9], direction="pull"))
    assert prefill.poll(h) is TransferStatus.DONE
    assert_moved_exactly(dst, src, [4, 5], [0, 9])


def test_descriptors_are_one_per_layer_and_run(pair):
    prefill, *_ = pair
    prefill.send(TransferSpec("r1", "decode", [0, 1, 2, 6, 7], [3, 4, 5, 8, 9]))
    assert prefill.stats.num_descriptors == NUM_LAYERS * 2


def test_a_dropped_transfer_stays_pending_then_fails_at_its_timeout(pair):
    prefill, _, dst, clock = pair
    prefill.inject_fault(Fault(FaultKind.DROP))
    h = prefill.send(TransferSpec("r1", "decode", [0], [0]))
    assert prefill.poll(h) is TransferStatus.PENDING
    clock.now_s = 1.0
    assert prefill.poll(h) is TransferStatus.FAILED
    assert torch.all(dst == POISON)
    assert prefill.stats.num_failed == 1


def test_a_truncated_transfer_lands_part_of_the_bytes_and_fails(pair):
    prefill, src, dst, _ = pair
    prefill.inject_fault(Fault(FaultKind.TRUNCATE, keep_fraction=0.5))
    h = prefill.send(TransferSpec("r1", "decode", [0, 1], [2, 3]))
    assert prefill.poll(h) is TransferStatus.FAILED
    flat_src, flat_dst = src.view(-1), dst.view(-1)
    landed_floats = (flat_dst != POISON).sum().item()
    assert landed_floats == NUM_LAYERS * 2 * (BLOCK_BYTES // 4) // 2  # half of 2 blocks
    assert torch.equal(flat_dst[2 * 32 : 3 * 32], flat_src[0:32])  # layer 0 block 2 = src b0


def test_a_delayed_transfer_lands_after_the_delay(pair):
    prefill, src, dst, clock = pair
    prefill.inject_fault(Fault(FaultKind.DELAY, delay_s=0.5))
    h = prefill.send(TransferSpec("r1", "decode", [0], [1]))
    assert prefill.poll(h) is TransferStatus.PENDING
    assert torch.all(dst == POISON)
    clock.now_s = 0.5
    assert prefill.poll(h) is TransferStatus.DONE
    assert_moved_exactly(src, dst, [0], [1])


def test_a_delay_past_the_timeout_fails_without_touching_the_destination(pair):
    prefill, _, dst, clock = pair
    prefill.inject_fault(Fault(FaultKind.DELAY, delay_s=5.0))
    h = prefill.send(TransferSpec("r1", "decode", [0], [1], timeout_s=2.0))
    clock.now_s = 2.0
    assert prefill.poll(h) is TransferStatus.FAILED
    assert torch.all(dst == POISON)


def test_a_fault_for_one_request_spares_the_others(pair):
    prefill, *_ = pair
    prefill.inject_fault(Fault(FaultKind.TRUNCATE, request_id="r2"))
    h1 = prefill.send(TransferSpec("r1", "decode", [0], [0]))
    h2 = prefill.send(TransferSpec("r2", "decode", [1], [1]))
    assert (prefill.poll(h1), prefill.poll(h2)) == (TransferStatus.DONE, TransferStatus.FAILED)


def test_a_terminal_status_is_reported_once(pair):
    prefill, *_ = pair
    h = prefill.send(TransferSpec("r1", "decode", [0], [0]))
    assert prefill.poll(h) is TransferStatus.DONE
    with pytest.raises(KeyError):
        prefill.poll(h)


def test_an_empty_spec_is_done_at_once(pair):
    prefill, *_ = pair
    assert prefill.poll(prefill.send(TransferSpec("r1", "decode", [], []))) is TransferStatus.DONE


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TransferSpec("r", "nobody", [0], [0]), "unknown peer"),
        (TransferSpec("r", "decode", [0], [10]), "out of range"),
        (TransferSpec("r", "decode", [0, 1], [3, 3]), "repeat"),
        (TransferSpec("r", "decode", [0], [0], layer_start=2, layer_end=2), "layer range"),
    ],
)
def test_malformed_specs_are_refused(pair, spec, message):
    prefill, *_ = pair
    with pytest.raises(ValueError, match=message):
        prefill.send(spec)


def test_peers_with_another_block_shape_are_refused():
    fabric = InProcFabric()
    a, b = InProcTransport("a", fabric), InProcTransport("b", fabric)
    a.register(kv_cache())
    a.add_peer(b.register(torch.zeros(3, 10, 2, 4, 2, 4)))
    with pytest.raises(ValueError, match="incompatible"):
        a.send(TransferSpec("r", "b", [0], [0]))


def test_transports_are_made_by_name():
    transport = make_transport("inproc", "x", fabric=InProcFabric())
    assert isinstance(transport, InProcTransport)
    with pytest.raises(ValueError, match="unknown KV transport"):
        make_transport("carrier-pigeon", "x")
