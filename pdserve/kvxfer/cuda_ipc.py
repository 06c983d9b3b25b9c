"""GPU-to-GPU transport for GPUs of one host: the peer's KV tensor is mapped into this process
through a CUDA IPC handle (torch.multiprocessing's tensor reduction), and each transfer is
queued on a private copy stream and completes when its CUDA event fires.

Copies: one cudaMemcpyAsync per descriptor (per layer and run: copy engines, peer to peer over
NVLink). The two processes must see the same GPU numbering (same CUDA_VISIBLE_DEVICES; `pdserve
up --kv-transport cuda_ipc` puts each worker on `--device cuda:N` for this). A strided copy
kernel per run (every layer in one launch) was tried and removed: PyTorch's cross-device
copy kernel faulted (illegal address) on a peer's IPC-mapped memory on two H100s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.multiprocessing.reductions import reduce_tensor

from pdserve.kvxfer.base import TransportBase
from pdserve.kvxfer.coalesce import Descriptors
from pdserve.kvxfer.spec import Direction, PeerMetadata


class CudaIpcTransport(TransportBase):
    kind = "cuda_ipc"

    def __init__(
        self,
        name: str,
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], float] | None = None,
    ):
        super().__init__(name, timeout_s=timeout_s, clock=clock)
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
        peer_cache = meta.backend["rebuild"](*meta.backend["args"])
        return peer_cache.view(-1).view(torch.uint8)

    def _post(self, peer: torch.Tensor, descs: Descriptors, direction: Direction) -> Any:
        src, dst = (self._local, peer) if direction == "push" else (peer, self._local)
        device = self._local.device
        # Ordered after whatever the caller already queued (e.g. this layer's attention).
        self._stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self._stream):
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
