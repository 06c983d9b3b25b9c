"""In-process transport (tests, and two instances sharing one process): copies between two
registered tensors found through a shared InProcFabric. Copies run when posted, so a transfer
is DONE at the first poll after posting; faults come from TransportBase."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pdserve.kvxfer.base import TransportBase
from pdserve.kvxfer.coalesce import Descriptors
from pdserve.kvxfer.spec import Direction, PeerMetadata


class InProcFabric:
    """Name -> flat byte view of each registered KV cache; what 'the network' is in-process."""

    def __init__(self) -> None:
        self.caches: dict[str, torch.Tensor] = {}


class InProcTransport(TransportBase):
    kind = "inproc"

    def __init__(
        self,
        name: str,
        fabric: InProcFabric | None = None,
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], float] | None = None,
    ):
        super().__init__(name, timeout_s=timeout_s, clock=clock)
        self.fabric = fabric if fabric is not None else InProcFabric()
        self._local: torch.Tensor | None = None

    def _register(self, kv_cache: torch.Tensor) -> dict[str, Any]:
        if self.name in self.fabric.caches:
            raise ValueError(f"{self.name} is already on the fabric")
        self._local = kv_cache.view(-1).view(torch.uint8)  # [total_bytes]
        self.fabric.caches[self.name] = self._local
        return {}

    def _add_peer(self, meta: PeerMetadata) -> torch.Tensor:
        if meta.name not in self.fabric.caches:
            raise ValueError(f"peer {meta.name} is not on this fabric")
        return self.fabric.caches[meta.name]

    def _post(self, peer: torch.Tensor, descs: Descriptors, direction: Direction) -> Any:
        src, dst = (self._local, peer) if direction == "push" else (peer, self._local)
        # One copy per descriptor (per layer and run), never per block.
        for s, d, n in zip(
            descs.src_offsets.tolist(), descs.dst_offsets.tolist(), descs.nbytes.tolist()
        ):
            dst[d : d + n].copy_(src[s : s + n])
        return None  # landed already

    def _check(self, token: Any) -> bool | None:
        return True

    def close(self) -> None:
        super().close()
        self.fabric.caches.pop(self.name, None)
