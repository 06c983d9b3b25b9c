"""Fleet specs: `fused:4`, `prefill:2,decode:6`, `fused:2:h100,fused:2:h200` -> SimInstances.

Each group is ROLE:COUNT[:GPU]; a group without a GPU uses the default profile. Instances are
numbered in the order given, which also places them on hosts (network.Topology).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pdserve.config import SchedulerConfig
from pdserve.sched.scheduler import Scheduler
from pdserve.sim.instance import CostExecutor, SimInstance
from pdserve.sim.profiles import Profile

ROLES = ("fused", "prefill", "decode")


@dataclass(frozen=True, slots=True)
class FleetGroup:
    role: str
    count: int
    gpu: str = ""


def parse_fleet(spec: str) -> list[FleetGroup]:
    groups = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        fields = part.split(":")
        if len(fields) not in (2, 3) or fields[0] not in ROLES or not fields[1].isdigit():
            raise ValueError(f"fleet group {part!r}: expected ROLE:COUNT[:GPU], ROLE in {ROLES}")
        if int(fields[1]) < 1:
            raise ValueError(f"fleet group {part!r}: COUNT must be >= 1")
        groups.append(FleetGroup(fields[0], int(fields[1]), fields[2] if len(fields) == 3 else ""))
    roles = {g.role for g in groups}
    if not groups:
        raise ValueError("empty fleet spec")
    if ("prefill" in roles) != ("decode" in roles):
        raise ValueError(f"fleet {spec!r}: prefill instances need decode instances and back")
    if "fused" in roles and "prefill" in roles:
        raise ValueError(f"fleet {spec!r}: mix fused with prefill/decode in separate runs")
    return groups


def build_instances(
    groups: list[FleetGroup],
    profile_of: Callable[[str], Profile],
    scheduler_overrides: Mapping[str, int] | None = None,
    step_time=None,
) -> list[SimInstance]:
    """One SimInstance per instance of the fleet; `profile_of(gpu)` gives each group's profile
    ('' for the default). `step_time(plan)` replaces the cost model (parity tests)."""
    instances = []
    for group in groups:
        profile = profile_of(group.gpu)
        config = SchedulerConfig(max_num_batched_tokens=profile.max_num_batched_tokens,
                                 max_num_seqs=profile.max_num_seqs,
                                 **(scheduler_overrides or {}))  # fmt: skip
        for _ in range(group.count):
            make = _scheduler_factory(config, profile.num_blocks, profile.block_size)
            executor = CostExecutor(None if step_time else profile.cost, step_time)
            index = len(instances)
            instances.append(SimInstance(index, f"{group.role}-{index}", make, executor,
                                         group.role, group.gpu or profile.device))  # fmt: skip
    return instances


def _scheduler_factory(config: SchedulerConfig, num_blocks: int, block_size: int):
    return lambda: Scheduler(config, num_blocks, block_size, enable_prefix_caching=True)
