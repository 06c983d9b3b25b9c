"""NIXL transport: one instance's KV tensor registered as one region, each transfer one NIXL
request over the spec's coalesced descriptors (one per layer and run).

push = NIXL WRITE (local src -> peer dst), pull = NIXL READ (peer src -> local dst). The peer
only has to have registered its cache and handed over its metadata; the initiator drives the
transfer. UCX picks the wire per peer, no UCX_TLS needed: on one host a DRAM put is one
process_vm_writev per segment (CMA: single copy, the kernel pins the peer's pages; 4 MiB segments,
CMA_DEFAULTS), RDMA or TCP across hosts, CUDA for VRAM; TCP carries only the connection set-up.

Two agents per instance, both with the cache registered:

    peer's sender agent ──connects to──> our receiver agent   (metadata we hand out; a progress
                                                               thread answers connection set-up)
    our sender agent    ──connects to──> peer's receiver agent (posts our transfers, driven by the
                                                               caller: a CMA copy runs in `send`
                                                               and `poll`, no thread wakes for it)

NIXL's Python wrapper starts progress threads that never sleep (poll timeout 0): each spins a
core, which on a 2-core box slowed compute and every copy, this transport's own included. Ours
sleep in poll() for up to PROGRESS_THREAD_DELAY_US between UCX events. A sending agent with a
progress thread copies in that thread, woken late on a loaded box (~70-95 % of memcpy here,
against ~100 % when the caller's poll copies): hence none by default.

CMA pins and copies page by page, so on 4 KiB pages it reached ~60 % of a memcpy on the 2-core
dev box; registration therefore backs a DRAM cache with 2 MiB transparent huge pages, after which
CMA runs at memcpy speed (benchmarks/bench_kvxfer.py). RDMA registration gains too (fewer pages).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pdserve.kvxfer.base import TransportBase
from pdserve.kvxfer.coalesce import Descriptors
from pdserve.kvxfer.spec import Direction, PeerMetadata

logger = logging.getLogger(__name__)

HUGE_PAGE_BYTES = 2 << 20
PROGRESS_THREAD_DELAY_US = 1000  # NIXL's progress thread: poll() timeout between UCX events
# UCX tuning that only the same-host CMA transport reads (no effect on the transport chosen or on
# peers across hosts): a 4 MiB layer descriptor is one process_vm_writev, not eight (+5-10 %).
# Set only where the user has not set it, before the agents' UCX contexts read it.
CMA_DEFAULTS = {"UCX_CMA_SEG_SIZE": "4m"}
_MADV_HUGEPAGE, _MADV_COLLAPSE = 14, 25  # <linux/mman.h>; MADV_COLLAPSE since Linux 6.1


def load_nixl():
    """The NIXL agent classes (nixl_agent, nixl_agent_config), or ImportError saying why."""
    try:
        from nixl_cu12 import nixl_agent, nixl_agent_config
    except ImportError:
        from nixl._api import nixl_agent, nixl_agent_config  # the unsuffixed wheel
    return nixl_agent, nixl_agent_config


_config_swap = threading.Lock()


def make_agent(name: str, backends: tuple[str, ...], progress_thread: bool):
    """A NIXL agent whose progress thread, if any, sleeps between UCX events (the wrapper's
    nixl_agent always sets the thread's poll delay to 0, a busy spin: the delay is set here by
    handing it a config type that keeps ours)."""
    nixl_agent, nixl_agent_config = load_nixl()
    for key, value in CMA_DEFAULTS.items():
        os.environ.setdefault(key, value)
    config = nixl_agent_config(enable_prog_thread=progress_thread, backends=list(backends))
    if not progress_thread:
        return nixl_agent(name, config)
    bindings = getattr(sys.modules[nixl_agent.__module__], "nixlBind", None)
    if bindings is None or not hasattr(bindings, "nixlAgentConfig"):
        logger.warning("%s: cannot set NIXL's progress thread delay; it will spin", name)
        return nixl_agent(name, config)
    base = bindings.nixlAgentConfig

    class _SleepingConfig(base):
        def __setattr__(self, key, value):
            super().__setattr__(key, PROGRESS_THREAD_DELAY_US if key == "pthrDelay" else value)

    with _config_swap, _swapped(bindings, "nixlAgentConfig", _SleepingConfig):
        return nixl_agent(name, config)


@contextlib.contextmanager
def _swapped(obj, attr: str, value):
    saved = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, saved)


def back_with_huge_pages(tensor) -> int:
    """Back the whole 2 MiB pages inside a CPU tensor with transparent huge pages, now
    (MADV_COLLAPSE copies in place: the bytes do not change) and for later faults
    (MADV_HUGEPAGE). Returns the bytes collapsed; 0 where the kernel or the memory refuses
    (not Linux, THP off, Linux < 6.1, shared memory with shmem THP off, CUDA or pinned memory).
    Collapsing 4 KiB pages copies them (~2.6 s per GiB on the loaded dev box); memory allocated
    after MADV_HUGEPAGE (torch: THP_MEM_ALLOC_ENABLE=1) is already huge and takes ~4 ms per GiB."""
    if tensor.is_cuda or tensor.is_pinned() or not sys.platform.startswith("linux"):
        return 0
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    lo = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    hi = end // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    if hi <= lo:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for advice in (_MADV_HUGEPAGE, _MADV_COLLAPSE):
        if libc.madvise(lo, hi - lo, advice) != 0:
            why = errno.errorcode.get(ctypes.get_errno(), "?")
            logger.info("huge pages refused (madvise %d: %s); 4 KiB pages stay", advice, why)
            return 0
    return hi - lo


@dataclass(frozen=True, slots=True)
class _NixlPeer:
    agent_name: str
    base_addr: int  # address of the peer's KV tensor in the peer's process
    device_id: int  # 0 for DRAM
    mem_type: str  # "DRAM" or "VRAM"


class NixlTransport(TransportBase):
    kind = "nixl"

    def __init__(
        self,
        name: str,
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], float] | None = None,
        backends: tuple[str, ...] = ("UCX",),
        progress_thread: bool = False,
        huge_pages: bool = True,
    ):
        """progress_thread: also drive this side's transfers from a (sleeping) thread, so they
        move between polls; without it they move inside `poll`. huge_pages: back a DRAM cache
        with 2 MiB pages at registration."""
        super().__init__(name, timeout_s=timeout_s, clock=clock)
        self.receiver = make_agent(name, backends, progress_thread=True)
        self.agent = make_agent(f"{name}:send", backends, progress_thread=progress_thread)
        self._reg_descs: list[tuple[Any, Any]] = []  # (agent, its registration)
        self._local: _NixlPeer | None = None
        self.huge_pages = huge_pages
        self.huge_page_bytes = 0  # bytes of the registered cache on 2 MiB pages

    def _register(self, kv_cache) -> dict[str, Any]:
        if self.huge_pages and not kv_cache.is_cuda:
            t0 = time.perf_counter()
            self.huge_page_bytes = back_with_huge_pages(kv_cache)
            logger.info("%s: %d MiB of the KV cache on huge pages (%.0f ms)", self.name,
                        self.huge_page_bytes >> 20, 1e3 * (time.perf_counter() - t0))  # fmt: skip
        for agent in (self.receiver, self.agent):  # one region each: the whole tensor
            self._reg_descs.append((agent, agent.register_memory(kv_cache)))
        mem_type = "VRAM" if kv_cache.is_cuda else "DRAM"
        device_id = kv_cache.device.index if kv_cache.is_cuda else 0
        self._local = _NixlPeer(self.name, kv_cache.data_ptr(), device_id, mem_type)
        return {
            "agent_metadata": self.receiver.get_agent_metadata(),  # bytes; includes the region
            "base_addr": self._local.base_addr,
            "device_id": device_id,
            "mem_type": mem_type,
        }

    def _add_peer(self, meta: PeerMetadata) -> _NixlPeer:
        agent_name = self.agent.add_remote_agent(meta.backend["agent_metadata"])
        b = meta.backend
        return _NixlPeer(agent_name, b["base_addr"], b["device_id"], b["mem_type"])

    def _dlist(self, side: _NixlPeer, offsets: np.ndarray, nbytes: np.ndarray):
        rows = np.empty((offsets.size, 3), dtype=np.uint64)  # [n, (addr, len, device_id)]
        rows[:, 0] = offsets + side.base_addr
        rows[:, 1] = nbytes
        rows[:, 2] = side.device_id
        return self.agent.get_xfer_descs(rows, side.mem_type)

    def _post(self, peer: _NixlPeer, descs: Descriptors, direction: Direction) -> Any:
        if direction == "push":
            local_offsets, remote_offsets, op = descs.src_offsets, descs.dst_offsets, "WRITE"
        else:
            local_offsets, remote_offsets, op = descs.dst_offsets, descs.src_offsets, "READ"
        local = self._dlist(self._local, local_offsets, descs.nbytes)
        remote = self._dlist(peer, remote_offsets, descs.nbytes)
        handle = self.agent.initialize_xfer(op, local, remote, peer.agent_name)
        if self.agent.transfer(handle) == "ERR":
            self._release(handle)
            raise RuntimeError(f"NIXL refused to post {op} to {peer.agent_name}")
        return handle

    def _check(self, token: Any) -> bool | None:
        state = self.agent.check_xfer_state(token)
        if state == "PROC":
            return None
        self._release(token)
        return state == "DONE"

    def _cancel(self, token: Any) -> None:
        self._release(token)  # NIXL cancels an active request on release

    def _release(self, handle) -> None:
        try:
            self.agent.release_xfer_handle(handle)
        except Exception as exc:  # cannot cancel: NIXL keeps it; nothing more we can do
            logger.warning("%s: releasing a NIXL request failed: %s", self.name, exc)

    def close(self) -> None:
        super().close()
        for _, peer in self._peers.values():
            self.agent.remove_remote_agent(peer.agent_name)
        self._peers.clear()
        for agent, descs in self._reg_descs:
            agent.deregister_memory(descs)
        self._reg_descs.clear()
