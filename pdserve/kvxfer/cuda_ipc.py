"""GPU-to-GPU transport for GPUs of one host: the peer's KV tensor is mapped into this process
through a CUDA IPC handle (torch.multiprocessing's tensor reduction), and each transfer is
queued on a private copy stream and completes when its CUDA event fires.

Copies: with `strided=False` (default) one cudaMemcpyAsync per descriptor (per layer and run,
copy engines, peer-to-peer over NVLink); with `strided=True` one strided copy kernel per run
covering every layer of the range ([num_layers, run_bytes] at the layer stride), which trades
launches for a kernel that reads peer memory. Both need the two processes to see the same GPU
numbering (same CUDA_VISIBLE_DEVICES).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
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
        strided: bool = False,
    ):
        super().__init__(name, timeout_s=timeout_s, clock=clock)
        self.strided = strided
        self._local: torch.Tensor | None = None  # [total_bytes] uint8 view of the KV cache
        self._stream: torch.cuda.Stream | None = None

    def _register(self, kv_cache: torch.Tensor) -> dict[str, Any]:
        if not kv_cache.is_cuda:
            raise ValueError("CUDA IPC needs a KV cache on a GPU")
        self._local = kv_cache.view(-1).view(torch.uint8)
        self._stream = torch.cuda.Stream(device=kv_cache.device)
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
            if self.strided and descs.is_layer_major:
                self._copy_strided(src, dst, descs)
            else:
                for s, d, n in zip(
                    descs.src_offsets.tolist(), descs.dst_offsets.tolist(), descs.nbytes.tolist()
                ):
                    dst[d : d + n].copy_(src[s : s + n], non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._stream)
        # The source must not be reused by the allocator before the copy ran.
        src.record_stream(self._stream)
        return done

    def _copy_strided(self, src: torch.Tensor, dst: torch.Tensor, descs: Descriptors) -> None:
        """Descriptors are layer-major [num_layers, num_runs]: per run, one [L, run] copy."""
        num_layers = descs.num_layers
        num_runs = len(descs) // num_layers
        src_off = descs.src_offsets.reshape(num_layers, num_runs)
        dst_off = descs.dst_offsets.reshape(num_layers, num_runs)
        nbytes = descs.nbytes.reshape(num_layers, num_runs)
        src_stride = int(src_off[1, 0] - src_off[0, 0]) if num_layers > 1 else 0
        dst_stride = int(dst_off[1, 0] - dst_off[0, 0]) if num_layers > 1 else 0
        # Copy 8-byte words when every offset and length allows it (a byte kernel is slower).
        aligned = np.concatenate((src_off[0], dst_off[0], nbytes[0], [src_stride, dst_stride]))
        word = 8 if not (aligned % 8).any() and src.data_ptr() % 8 == dst.data_ptr() % 8 == 0 else 1
        s_words, d_words = _words(src, word), _words(dst, word)
        for r in range(num_runs):
            shape = (num_layers, int(nbytes[0, r]) // word)
            s_at = s_words.storage_offset() + int(src_off[0, r]) // word  # as_strided: absolute
            d_at = d_words.storage_offset() + int(dst_off[0, r]) // word
            s_view = s_words.as_strided(shape, (src_stride // word, 1), s_at)
            d_view = d_words.as_strided(shape, (dst_stride // word, 1), d_at)
            d_view.copy_(s_view, non_blocking=True)

    def _check(self, token: torch.cuda.Event) -> bool | None:
        return True if token.query() else None

    def _cancel(self, token: torch.cuda.Event) -> None:
        """A queued GPU copy cannot be recalled; it still lands (GPU copies do not hang)."""


def _words(flat: torch.Tensor, word: int) -> torch.Tensor:
    return flat.view(torch.int64) if word == 8 else flat
