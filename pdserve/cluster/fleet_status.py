"""The fleet seen as one engine, for the server: one WorkerInfo and one summed WorkerStatus.

The server's `/v1/models`, context checks and `/metrics` read `info` and `status()` of their
EngineClient; for a fleet those are the instances' values combined here. The fleet assumes one
model and one block size on every instance (as `pdserve up` starts them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import fields, replace

from pdserve.cluster.registry import InstanceRecord
from pdserve.engine.protocol import EngineStats, WorkerInfo, WorkerStatus
from pdserve.types import InstanceSnapshot

CONTROLLER_ID = "controller"
_SUMMED = (
    "num_waiting",
    "num_running",
    "num_waiting_tokens",
    "num_running_tokens",
    "num_free_blocks",
    "num_cached_blocks",
    "num_total_blocks",
)


def fleet_info(records: Sequence[InstanceRecord], incarnation: str) -> WorkerInfo:
    """The first instance's model and vocabulary; the smallest context; all the blocks."""
    first = records[0].info
    return replace(
        first,
        instance_id=CONTROLLER_ID,
        incarnation=incarnation,
        pid=os.getpid(),
        max_model_len=min(r.info.max_model_len for r in records),
        num_total_blocks=sum(r.info.num_total_blocks for r in records),
    )


def aggregate_status(records: Sequence[InstanceRecord]) -> WorkerStatus:
    """Sum of the instances' last heartbeats (load gauges and monotonic counters)."""
    statuses = [r.status for r in records if r.status is not None]
    sums = {name: sum(getattr(s.snapshot, name) for s in statuses) for name in _SUMMED}
    block_size = statuses[0].snapshot.block_size if statuses else 16
    snapshot = InstanceSnapshot(CONTROLLER_ID, block_size=block_size, **sums)
    return WorkerStatus(
        snapshot, _sum_stats([s.stats for s in statuses]), sum(s.kv_seq for s in statuses)
    )


def _sum_stats(all_stats: Sequence[EngineStats]) -> EngineStats:
    if not all_stats:
        return EngineStats()
    out = {}
    for f in fields(EngineStats):
        values = [getattr(s, f.name) for s in all_stats]
        if f.name == "finished":
            merged: dict[str, int] = {}
            for d in values:
                for reason, n in d.items():
                    merged[reason] = merged.get(reason, 0) + n
            out[f.name] = merged
        elif f.name == "queue_time_counts":
            width = max(len(v) for v in values)
            out[f.name] = tuple(sum(v[i] for v in values if i < len(v)) for i in range(width))
        else:
            out[f.name] = sum(values)
    return EngineStats(**out)
