"""kvxfer: moving KV blocks between instances. Register a KV cache once, add peers, send
TransferSpecs asynchronously, poll TransferHandles. Transports are chosen by name
(`make_transport("inproc" | "nixl" | "cuda_ipc", name)`) and imported only when chosen."""

from pdserve.kvxfer.faults import Fault, FaultKind
from pdserve.kvxfer.spec import (
    KVLayout,
    PeerMetadata,
    TransferHandle,
    TransferSpec,
    TransferStatus,
    TransportStats,
)
from pdserve.kvxfer.transport import TRANSPORTS, KVTransport, make_transport, wait_all

__all__ = [
    "TRANSPORTS",
    "Fault",
    "FaultKind",
    "KVLayout",
    "KVTransport",
    "PeerMetadata",
    "TransferHandle",
    "TransferSpec",
    "TransferStatus",
    "TransportStats",
    "make_transport",
    "wait_all",
]
