"""NIXL between two processes on CPU memory: the peer process registers a poisoned cache; this
process pushes into it and pulls from it. Bytes must match and only listed blocks move."""

import pytest
import torch

from pdserve.kvxfer import Fault, FaultKind, TransferSpec, TransferStatus, wait_all

from .kv_helpers import NUM_LAYERS, POISON, assert_moved_exactly, kv_cache
from .peer_process import start_peer

try:
    from pdserve.kvxfer.nixl import load_nixl

    load_nixl()
except ImportError as exc:  # pragma: no cover - the wheel is in the dev environment
    pytest.skip(f"nixl cannot load: {exc}", allow_module_level=True)


@pytest.fixture(scope="module")
def nixl_pair():
    """(prefill transport in this process with a random cache, its cache, decode peer)."""
    from pdserve.kvxfer.nixl import NixlTransport

    peer, metadata = start_peer("nixl", "decode")
    prefill = NixlTransport("prefill", timeout_s=20.0)
    src = kv_cache(seed=3)
    prefill.register(src)
    prefill.add_peer(metadata)
    yield prefill, src, peer
    peer.stop()
    prefill.close()


@pytest.fixture
def pair(nixl_pair):
    prefill, src, peer = nixl_pair
    peer.reset()
    prefill.faults.clear()
    return nixl_pair


def test_push_moves_exactly_the_listed_blocks(pair):
    prefill, src, peer = pair
    h = prefill.send(TransferSpec("r1", "decode", [1, 2, 3, 7], [6, 7, 8, 0]))
    assert wait_all(prefill, [h]) == [TransferStatus.DONE]
    assert_moved_exactly(src, peer.cache(), [1, 2, 3, 7], [6, 7, 8, 0])


def test_layer_by_layer_streaming_moves_each_layer(pair):
    prefill, src, peer = pair
    handles = [
        prefill.send(TransferSpec("r1", "decode", [4, 5], [1, 2], layer, layer + 1))
        for layer in range(NUM_LAYERS - 1)
    ]
    assert wait_all(prefill, handles) == [TransferStatus.DONE] * (NUM_LAYERS - 1)
    assert_moved_exactly(src, peer.cache(), [4, 5], [1, 2], layers=range(NUM_LAYERS - 1))


def test_pull_reads_the_peers_blocks(pair):
    prefill, src, peer = pair
    remote = kv_cache(seed=4)
    peer.ask("set", remote.numpy())
    saved = src.clone()
    src.fill_(POISON)
    try:
        h = prefill.send(TransferSpec("r1", "decode", [0, 9], [3, 4], direction="pull"))
        assert wait_all(prefill, [h]) == [TransferStatus.DONE]
        assert_moved_exactly(remote, src, [0, 9], [3, 4])
    finally:
        src.copy_(saved)


def test_a_dropped_transfer_fails_at_its_timeout_and_moves_nothing(pair):
    prefill, _, peer = pair
    prefill.inject_fault(Fault(FaultKind.DROP))
    h = prefill.send(TransferSpec("r1", "decode", [0], [0], timeout_s=0.2))
    assert wait_all(prefill, [h], sleep_s=0.01) == [TransferStatus.FAILED]
    assert torch.all(peer.cache() == POISON)


def test_a_truncated_transfer_fails_with_part_of_the_bytes_landed(pair):
    prefill, src, peer = pair
    prefill.inject_fault(Fault(FaultKind.TRUNCATE, keep_fraction=0.5))
    h = prefill.send(TransferSpec("r1", "decode", [0, 1], [2, 3]))
    assert wait_all(prefill, [h]) == [TransferStatus.FAILED]
    dst = peer.cache()
    assert torch.equal(dst[0, 2:4], src[0, 0:2])  # layer 0 and half of layer 1 landed
    assert torch.all(dst[2] == POISON)


def test_a_delay_past_the_timeout_fails(pair):
    prefill, _, peer = pair
    prefill.inject_fault(Fault(FaultKind.DELAY, delay_s=5.0))
    h = prefill.send(TransferSpec("r1", "decode", [0], [0], timeout_s=0.2))
    assert wait_all(prefill, [h], sleep_s=0.01) == [TransferStatus.FAILED]
    assert torch.all(peer.cache() == POISON)


def test_a_transfer_after_a_failure_succeeds(pair):
    prefill, src, peer = pair
    prefill.inject_fault(Fault(FaultKind.DROP))
    failed = prefill.send(TransferSpec("r1", "decode", [0], [0], timeout_s=0.1))
    assert wait_all(prefill, [failed], sleep_s=0.01) == [TransferStatus.FAILED]
    h = prefill.send(TransferSpec("r2", "decode", [5], [5]))
    assert wait_all(prefill, [h]) == [TransferStatus.DONE]
    assert_moved_exactly(src, peer.cache(), [5], [5])
