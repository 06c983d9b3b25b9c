"""CUDA IPC between two processes on two GPUs of one host: the peer's cache lives on cuda:1,
this process's on cuda:0. Run on a 2-GPU machine: pytest -m gpu tests/kvxfer/test_cuda_ipc.py"""

import time

import pytest
import torch

from pdserve.kvxfer import TransferSpec, TransferStatus, wait_all

from .kv_helpers import NUM_LAYERS, POISON, assert_moved_exactly, kv_cache
from .peer_process import start_peer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs"
    ),
]


@pytest.fixture(scope="module")
def ipc_peer():
    peer, metadata = start_peer("cuda_ipc", "decode", device="cuda:1")
    yield peer, metadata
    peer.stop()


@pytest.fixture(params=[16, 0], ids=["memcpy", "batched"])
def pair(request, ipc_peer):
    """(prefill transport on cuda:0, its cache, decode peer with a poisoned cache on cuda:1)."""
    from pdserve.kvxfer.cuda_ipc import CudaIpcTransport

    peer, metadata = ipc_peer
    peer.reset()
    prefill = CudaIpcTransport("prefill", timeout_s=10, max_memcpy_descriptors=request.param)
    src = kv_cache(seed=5).to("cuda:0")
    prefill.register(src)
    prefill.add_peer(metadata)
    yield prefill, src, peer
    prefill.close()


def test_push_moves_exactly_the_listed_blocks(pair):
    prefill, src, peer = pair
    src_ids, dst_ids = [0, 1, 2, 6, 7], [3, 4, 5, 8, 9]
    h = prefill.send(TransferSpec("r1", "decode", src_ids, dst_ids))
    assert wait_all(prefill, [h]) == [TransferStatus.DONE]
    assert_moved_exactly(src.cpu(), peer.cache(), src_ids, dst_ids)


def test_layer_by_layer_streaming_is_ordered_after_the_callers_stream(pair):
    prefill, src, peer = pair
    handles = []
    for layer in range(NUM_LAYERS):
        src[layer].add_(1.0)  # queued on the current stream; the copy must see it
        handles.append(prefill.send(TransferSpec("r1", "decode", [4], [0], layer, layer + 1)))
    assert wait_all(prefill, handles) == [TransferStatus.DONE] * NUM_LAYERS
    assert_moved_exactly(src.cpu(), peer.cache(), [4], [0])


def test_the_peers_cache_is_mapped_on_this_device(pair):
    """Opened on the local device (peer access over NVLink), not across devices (staged)."""
    prefill, src, _ = pair
    ((_, peer_view),) = prefill._peers.values()
    assert peer_view.device == src.device


def test_pull_reads_the_peers_blocks(pair):
    prefill, src, peer = pair
    remote = kv_cache(seed=6)
    peer.ask("set", remote.numpy())
    src.fill_(POISON)
    h = prefill.send(TransferSpec("r1", "decode", [8, 9], [0, 1], direction="pull"))
    assert wait_all(prefill, [h]) == [TransferStatus.DONE]
    assert_moved_exactly(remote, src.cpu(), [8, 9], [0, 1])


def test_posting_does_not_wait_for_the_compute_it_is_ordered_after(ipc_peer):
    """A streamed layer's transfer runs behind that layer's compute; posting it must return at
    once (the descriptor table once went up on the copy stream and held the host until the GPU
    got there, at every layer of a prefill)."""
    from pdserve.kvxfer.cuda_ipc import CudaIpcTransport

    peer, metadata = ipc_peer
    peer.reset()
    prefill = CudaIpcTransport("prefill", timeout_s=10, max_memcpy_descriptors=0)  # the kernel
    src = kv_cache(seed=7).to("cuda:0")
    prefill.register(src)
    prefill.add_peer(metadata)
    src_ids, dst_ids = [0, 2, 4, 6, 8], [1, 3, 5, 7, 9]
    warm = prefill.send(TransferSpec("r0", "decode", src_ids, dst_ids))  # compiles the kernel
    assert wait_all(prefill, [warm]) == [TransferStatus.DONE]
    torch.cuda.synchronize(0)
    torch.cuda._sleep(400_000_000)  # ~0.2 s of GPU time queued on the current stream
    src[:, 4].add_(1.0)  # behind the sleep; the copy must see it
    t0 = time.perf_counter()
    h = prefill.send(TransferSpec("r1", "decode", src_ids, dst_ids))
    posted_s = time.perf_counter() - t0
    assert wait_all(prefill, [h]) == [TransferStatus.DONE]
    assert_moved_exactly(src.cpu(), peer.cache(), src_ids, dst_ids)
    assert posted_s < 0.05, f"posting held the host {posted_s * 1e3:.0f} ms"
    prefill.close()
