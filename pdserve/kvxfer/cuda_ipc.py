"""GPU-to-GPU transport for GPUs of one host: the peer's KV tensor is mapped into this process
through a CUDA IPC handle (torch.multiprocessing's tensor reduction), and each transfer is
queued on a private copy stream and completes when its CUDA event fires.

The peer's memory is opened in this process on THIS process's device, with peer access (CUDA
maps it over NVLink): to PyTorch the peer cache is then a tensor on the local device, so a copy
is a plain device-to-device copy the hardware routes peer to peer. (Opened on the peer's own
device index instead, PyTorch copied across devices without peer access: staged, 26 GB/s, and
blocking the host.) Copies: up to `max_memcpy_descriptors` descriptors, one cudaMemcpyAsync
each (copy engines); more (scattered blocks), one launch of `copy_kernel.copy_ranges` over the
whole descriptor table instead of a Python loop of copies (H100s, run of b93eb7c: ~40 µs of host
time per 4 MiB `copy_`, ~8 µs per range batched with `_foreach_copy_`). The two processes must
see the same GPU numbering (same CUDA_VISIBLE_DEVICES; `pdserve up --kv-transport cuda_ipc`
puts each worker on `--device cuda:N` for this).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.multiprocessing.reductions import reduce_tensor

from pdserve.kvxfer.base import TransportBase
from pdserve.kvxfer.coalesce import Descriptors
from pdserve.kvxfer.copy_kernel import copy_ranges
from pdserve.kvxfer.spec import Direction, PeerMetadata

# Where `rebuild_cuda_tensor`'s arguments (from `reduce_tensor`) name the device whose context
# opens the handle: tensor class, size, stride, offset, storage class, dtype, storage device.
_STORAGE_DEVICE_ARG = 6


class CudaIpcTransport(TransportBase):
    kind = "cuda_ipc"

    def __init__(
        self,
        name: str,
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], float] | None = None,
        max_memcpy_descriptors: int = 16,
    ):
        super().__init__(name, timeout_s=timeout_s, clock=clock)
        self.max_memcpy_descriptors = max_memcpy_descriptors
        self._local: torch.Tensor | None = None  # [total_bytes] uint8 view of the KV cache
        self._stream: torch.cuda.Stream | None = None

    def _register(self, kv_cache: torch.Tensor) -> dict[str, Any]:
        if not kv_cache.is_cuda:
            raise ValueError("CUDA IPC needs a KV cache on a GPU")
        self._local = kv_cache.view(-1).view(torch.uint8)
        self._stream = torch.cuda.Stream(device=kv_cache.device)
        with torch.cuda.device(kv_cache.device):  # the handle's events on the cache's device
            rebuild, args = reduce_tensor(kv_cache)  # picklable: an IPC handle, not the bytes
        return {"rebuild": rebuild, "args": args}

    def _add_peer(self, meta: PeerMetadata) -> torch.Tensor:
        # Rebuilding opens the handle: the peer's memory is mapped here, no bytes move. It is
        # refused in the process that owns the memory (use the in-process transport there).
        args = list(meta.backend["args"])
        args[_STORAGE_DEVICE_ARG] = self._local.device.index  # open it in this device's context
        peer_cache = meta.backend["rebuild"](*args)
        return peer_cache.view(-1).view(torch.uint8)

    def _post(self, peer: torch.Tensor, descs: Descriptors, direction: Direction) -> Any:
        src, dst = (self._local, peer) if direction == "push" else (peer, self._local)
        device = self._local.device
        # Ordered after whatever the caller already queued (e.g. this layer's attention).
        self._stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self._stream):
            copied = len(descs) > self.max_memcpy_descriptors and copy_ranges(
                src, dst, descs.src_offsets, descs.dst_offsets, descs.nbytes
            )
            if not copied:  # few ranges (or not whole 8-byte words): one memcpy each
                for s, d, n in zip(
                    descs.src_offsets.tolist(), descs.dst_offsets.tolist(), descs.nbytes.tolist()
                ):
                    dst[d : d + n].copy_(src[s : s + n], non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._stream)
        # The source must not be reused by the allocator before the copy ran.
        src.record_stream(self._stream)
        return done

    def _check(self, token: torch.cuda.Event) -> bool | None:
        return True if token.query() else None

    def _cancel(self, token: torch.cuda.Event) -> None:
        """A queued GPU copy cannot be recalled; it still lands (GPU copies do not hang)."""
