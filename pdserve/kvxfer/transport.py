"""The KVTransport contract, the registry of transports by name, and a polling helper.

Who calls what (the engine's runner on each side, the controller between them):

    decode side                         prefill side
    meta_d = t.register(kv_cache)       meta_p = t.register(kv_cache)
              ---- metadata exchanged by the controller ---->
                                        t.add_peer(meta_d)
    scheduler reserves blocks  -- KVReservation(block_ids) -->
                                        for each finished layer range:
                                            h = t.send(TransferSpec(...))
                                        poll(h) until DONE/FAILED, then tell the decode side
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from typing import Protocol

from pdserve.kvxfer.faults import Fault
from pdserve.kvxfer.spec import TransferHandle, TransferSpec, TransferStatus, TransportStats


class KVTransport(Protocol):
    """Moves KV blocks between the registered caches of two instances.

    Contract:
    - `register(kv_cache)` once per instance, before any transfer; the tensor must stay alive and
      in place until `close()`. Returns opaque bytes (pickled PeerMetadata) to hand to peers;
      they come only from the controller (trusted), never from a client.
    - `add_peer(metadata) -> peer name`: after it, specs may name that peer. Peers need the same
      num_layers and block_bytes.
    - `send(spec)` returns at once; it raises ValueError for a malformed spec (unknown peer, ids
      out of range, repeated dst ids), never for a transport failure: those come back as FAILED.
      On a GPU, the copy is ordered after the work already queued on the caller's current stream
      (so a runner may send a layer as soon as it has queued that layer's compute).
    - `poll(handle)` never blocks and never hangs: a transfer not DONE by its timeout is FAILED.
      A terminal status (DONE/FAILED) is reported once; the handle is then forgotten.
    - The source's blocks must not be freed or rewritten while the transfer is PENDING (the
      scheduler's SENDING_KV lease); after FAILED the destination's blocks hold garbage.
    """

    name: str
    stats: TransportStats

    def register(self, kv_cache) -> bytes: ...
    def add_peer(self, metadata: bytes) -> str: ...
    def send(self, spec: TransferSpec) -> TransferHandle: ...
    def poll(self, handle: TransferHandle) -> TransferStatus: ...
    def inject_fault(self, fault: Fault, count: int = 1) -> None: ...
    def close(self) -> None: ...


# name -> "module:Class", imported only when chosen (nixl and CUDA stay optional).
TRANSPORTS = {
    "inproc": "pdserve.kvxfer.inproc:InProcTransport",
    "nixl": "pdserve.kvxfer.nixl:NixlTransport",
    "cuda_ipc": "pdserve.kvxfer.cuda_ipc:CudaIpcTransport",
}


def make_transport(kind: str, name: str, **kwargs) -> KVTransport:
    if kind not in TRANSPORTS:
        raise ValueError(f"unknown KV transport {kind!r}; known: {sorted(TRANSPORTS)}")
    module, cls = TRANSPORTS[kind].split(":")
    return getattr(importlib.import_module(module), cls)(name, **kwargs)


def wait_all(
    transport: KVTransport, handles: Sequence[TransferHandle], sleep_s: float = 0.0
) -> list[TransferStatus]:
    """Poll until every handle is terminal (bounded by the transfers' timeouts)."""
    statuses = [TransferStatus.PENDING] * len(handles)
    pending = list(range(len(handles)))
    while pending:
        still = []
        for i in pending:
            statuses[i] = transport.poll(handles[i])
            if statuses[i] is TransferStatus.PENDING:
                still.append(i)
        pending = still
        if pending and sleep_s:
            time.sleep(sleep_s)
    return statuses
