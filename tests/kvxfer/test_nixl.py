"""NIXL between two processes on CPU memory: the peer process registers a poisoned cache; this
process pushes into it and pulls from it. Bytes must match and only listed blocks move."""

import mmap
import os
import platform
import re

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
    peer.metadata = metadata  # for a second transport in this process
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


def _huge_pages_supported() -> bool:
    """Transparent huge pages not off, and MADV_COLLAPSE (Linux 6.1+)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return False
    except OSError:
        return False
    major, minor = (int(x) for x in re.findall(r"\d+", platform.release())[:2])
    return (major, minor) >= (6, 1)


def _anon_huge_bytes(start: int, end: int) -> int:
    """AnonHugePages of this process's mappings that lie inside [start, end)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if head:
                lo, hi = int(head[1], 16), int(head[2], 16)
                inside = start <= lo and hi <= end
            elif inside and line.startswith("AnonHugePages:"):
                total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(not _huge_pages_supported(), reason="no transparent huge pages here")
def test_registering_a_dram_cache_puts_its_whole_2mib_pages_on_huge_pages():
    from pdserve.kvxfer.nixl import HUGE_PAGE_BYTES, NixlTransport

    # 6 MiB in an anonymous mapping of its own, as the engine allocates a CPU cache (malloc may
    # place a tensor inside the heap, whose pages smaps does not attribute to the range)
    filled = kv_cache(seed=6, num_blocks=16384)
    mapping = mmap.mmap(-1, filled.numel() * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    cache = torch.frombuffer(mapping, dtype=torch.float32)
    cache = cache.view(filled.shape).copy_(filled)  # touched on 4 KiB pages before registering
    before = cache.clone()
    transport = NixlTransport("huge")
    try:
        transport.register(cache)
        start = cache.data_ptr()
        lo = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
        hi = (start + 6 * 2**20) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
        assert transport.huge_page_bytes == hi - lo >= 2 * HUGE_PAGE_BYTES
        assert _anon_huge_bytes(lo, hi) == hi - lo
        assert torch.equal(cache, before)  # collapsing moved the bytes, not changed them
    finally:
        transport.close()


def test_huge_pages_can_be_turned_off():
    from pdserve.kvxfer.nixl import NixlTransport

    transport = NixlTransport("small-pages", huge_pages=False)
    try:
        transport.register(kv_cache(fill=0.0, num_blocks=16384))
        assert transport.huge_page_bytes == 0
    finally:
        transport.close()


def test_push_over_tcp_alone_as_between_two_hosts(pair, monkeypatch):
    """This side's UCX may use TCP only, as across hosts (no shared memory, no CMA): the two
    sides agree on TCP and the bytes still land."""
    from pdserve.kvxfer.nixl import NixlTransport

    _, _, peer = pair
    monkeypatch.setenv("UCX_TLS", "tcp")  # read when the new agent creates its UCX context
    prefill = NixlTransport("prefill-tcp", timeout_s=20.0)
    try:
        src = kv_cache(seed=5)
        prefill.register(src)
        prefill.add_peer(peer.metadata)
        h = prefill.send(TransferSpec("r1", "decode", [2, 3, 9], [4, 5, 1]))
        assert wait_all(prefill, [h]) == [TransferStatus.DONE]
        assert_moved_exactly(src, peer.cache(), [2, 3, 9], [4, 5, 1])
    finally:
        prefill.close()


def test_agents_get_a_progress_thread_that_sleeps_between_events(monkeypatch):
    """NIXL's wrapper sets the thread's poll delay to 0 (a busy spin); make_agent keeps ours."""
    import sys

    from pdserve.kvxfer.nixl import PROGRESS_THREAD_DELAY_US, load_nixl, make_agent

    bindings = sys.modules[load_nixl()[0].__module__].nixlBind
    delays = []

    class Recording(bindings.nixlAgentConfig):
        def __setattr__(self, key, value):
            if key == "pthrDelay":
                delays.append(value)
            super().__setattr__(key, value)

    monkeypatch.setattr(bindings, "nixlAgentConfig", Recording)
    make_agent("sleepy", ("UCX",), progress_thread=True)
    assert delays == [PROGRESS_THREAD_DELAY_US]
    assert bindings.nixlAgentConfig is Recording  # put back after the agent was made


def test_an_idle_transport_uses_almost_no_cpu(pair):
    """Its threads sleep in poll(): a spinning one took 0.2-1 CPU s per s here."""
    import resource
    import time

    def cpu_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    cpu0, wall0 = cpu_s(), time.perf_counter()
    time.sleep(1.0)
    assert (cpu_s() - cpu0) / (time.perf_counter() - wall0) < 0.15


def test_the_cma_segment_default_yields_to_the_users_setting(monkeypatch):
    from pdserve.kvxfer.nixl import NixlTransport

    monkeypatch.delenv("UCX_CMA_SEG_SIZE", raising=False)
    NixlTransport("cma-default").close()
    assert os.environ["UCX_CMA_SEG_SIZE"] == "4m"
    monkeypatch.setenv("UCX_CMA_SEG_SIZE", "1m")
    NixlTransport("cma-user").close()
    assert os.environ["UCX_CMA_SEG_SIZE"] == "1m"


@pytest.mark.skipif(not _huge_pages_supported(), reason="no transparent huge pages here")
def test_the_engine_allocates_a_cpu_kv_cache_on_huge_pages_from_the_first_touch():
    from pdserve.engine.kv_cache import allocate_kv_cache
    from pdserve.kvxfer.nixl import HUGE_PAGE_BYTES
    from pdserve.model.shapes import get_shape

    cfg = get_shape("tiny-llama3")  # 2 layers x 2 kv heads x 16 x 4 bytes = 512 bytes a token
    cache = allocate_kv_cache(cfg, 1024, 16, torch.float32, "cpu")  # 8 MiB
    assert cache.shape == (2, 1024, 2, 16, 2, 16)
    assert not cache.any()  # zero pages, not touched yet
    cache.fill_(0.5)  # as KV writes would: every page faults in
    start = cache.data_ptr()
    lo = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    hi = (start + cache.numel() * 4) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    assert _anon_huge_bytes(lo, hi) == hi - lo >= 2 * HUGE_PAGE_BYTES
