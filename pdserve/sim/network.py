"""KV transfer times between instances: links by kind, a topology of hosts and racks, and
per-instance send/receive queues (one transfer at a time per direction: a NIC or NVLink port
moving one KV cache at full rate is how PD hand-offs behave when they contend).

    time = queueing + latency_s + bytes / bandwidth

Bandwidths are per direction, in GB/s (1e9 bytes/s); nominal figures of current hardware,
divided by nothing: they are the ceiling, not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    bandwidth_gbps: float  # GB/s, one direction
    latency_s: float


LINKS = {
    "nvlink": Link("nvlink", 450.0, 5e-6),  # H100 NVLink 4: 900 GB/s both ways
    "pcie": Link("pcie", 50.0, 10e-6),  # PCIe 5 x16 through host memory
    "rdma": Link("rdma", 50.0, 15e-6),  # one 400 Gb/s InfiniBand / RoCE NIC per GPU
    "tcp": Link("tcp", 10.0, 100e-6),  # 100 Gb/s Ethernet through the kernel's TCP stack
}


@dataclass(frozen=True, slots=True)
class Topology:
    """Instance i sits on host i // gpus_per_host, rack host // hosts_per_rack."""

    gpus_per_host: int = 8
    hosts_per_rack: int = 4
    intra_host: str = "nvlink"
    inter_host: str = "rdma"
    inter_rack: str = "rdma"
    inter_rack_extra_latency_s: float = 5e-6  # one more switch hop

    def link(self, src: int, dst: int) -> Link:
        host_src, host_dst = src // self.gpus_per_host, dst // self.gpus_per_host
        if host_src == host_dst:
            return LINKS[self.intra_host]
        if host_src // self.hosts_per_rack == host_dst // self.hosts_per_rack:
            return LINKS[self.inter_host]
        base = LINKS[self.inter_rack]
        return Link(
            base.name, base.bandwidth_gbps, base.latency_s + self.inter_rack_extra_latency_s
        )


class Network:
    def __init__(self, topology: Topology = Topology()):
        self.topology = topology
        self._send_free_s: dict[int, float] = {}  # instance index -> time its sender is free
        self._recv_free_s: dict[int, float] = {}
        self.num_transfers = 0
        self.num_bytes = 0

    def transfer(self, src: int, dst: int, num_bytes: int, now: float) -> tuple[float, float]:
        """Book a transfer; returns (start_s, done_s)."""
        link = self.topology.link(src, dst)
        start = max(now, self._send_free_s.get(src, 0.0), self._recv_free_s.get(dst, 0.0))
        done = start + link.latency_s + num_bytes / (link.bandwidth_gbps * 1e9)
        self._send_free_s[src] = self._recv_free_s[dst] = done
        self.num_transfers += 1
        self.num_bytes += num_bytes
        return start, done
