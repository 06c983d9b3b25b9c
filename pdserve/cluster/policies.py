"""Routing policies: where a request runs, as pure functions of the request, the instances'
snapshots, the prefix index's view (`matched`: instance_id -> leading blocks of the prompt it
holds) and `now`. Registered by name; the controller and the simulator call the same objects.

State a policy keeps (the round-robin cursor, the seeded RNG, per-instance step-time fits) is
fed only from its inputs, so the same inputs in the same order give the same decisions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from pdserve.cluster.cost_model import OnlineStepModel, StepCostModel, estimate_ttft_s
from pdserve.types import InstanceSnapshot, Request


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where a request goes. `decode_instance_id` is set only for a (prefill, decode) pair."""

    instance_id: str
    est_ttft_s: float = math.nan  # nan: the policy makes no estimate
    matched_blocks: int = 0  # leading prompt blocks already cached on `instance_id`
    reason: str = ""
    decode_instance_id: str | None = None


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    max_batched_tokens: int = 2048  # the instances' per-step token budget
    seed: int = 0  # power_of_two's RNG
    load_slack: float = 0.5  # prefix: an instance above (1 + slack) x mean load + one step is full
    kv_veto: float = 0.95  # ttft: instances above this KV usage are skipped while others are not
    prior: StepCostModel | None = None  # ttft: step-time model until an instance's fit exists


# A generic prior (seconds): ~10 ms per step + 20 us per prefill token; replaced by measurement.
DEFAULT_PRIOR = StepCostModel(0.01, 2e-5, 0.0, 1e-4, 1e-8)


class RoutingPolicy(Protocol):
    name: str
    needs_prefix: bool  # whether the caller must look the prompt up in the prefix index

    def route(
        self,
        req: Request,
        instances: Sequence[InstanceSnapshot],
        now: float,
        matched: Mapping[str, int] = {},  # noqa: B006 (read-only)
    ) -> RouteDecision:
        """Pick one of `instances` (non-empty, all eligible for this request)."""
        ...


def load_tokens(snap: InstanceSnapshot) -> int:
    """Tokens the instance still has to compute for the requests it holds."""
    return snap.num_waiting_tokens + snap.num_running_tokens


def add_pending(snap: InstanceSnapshot, num_tokens: int) -> InstanceSnapshot:
    """The snapshot as it will look once a request routed after it is queued: callers whose
    snapshots lag (published per step) add each routed request so a burst does not all land on
    the instance that looked idlest."""
    return replace(snap, num_waiting=snap.num_waiting + 1,
                   num_waiting_tokens=snap.num_waiting_tokens + num_tokens)  # fmt: skip


def _least_loaded(instances: Sequence[InstanceSnapshot], budget: int) -> InstanceSnapshot:
    # One step's budget of queued tokens weighs as much as a full KV cache.
    return min(instances, key=lambda s: load_tokens(s) / budget + s.kv_usage)


class RoundRobin:
    name, needs_prefix = "round_robin", False

    def __init__(self, config: PolicyConfig = PolicyConfig()):
        self._next = 0

    def route(self, req, instances, now, matched={}):  # noqa: B006
        snap = instances[self._next % len(instances)]
        self._next += 1
        return RouteDecision(snap.instance_id, matched_blocks=matched.get(snap.instance_id, 0),
                             reason="round robin")  # fmt: skip


class LeastLoad:
    name, needs_prefix = "least_load", False

    def __init__(self, config: PolicyConfig = PolicyConfig()):
        self.config = config

    def route(self, req, instances, now, matched={}):  # noqa: B006
        snap = _least_loaded(instances, self.config.max_batched_tokens)
        return RouteDecision(
            snap.instance_id,
            matched_blocks=matched.get(snap.instance_id, 0),
            reason=f"least load: {load_tokens(snap)} tokens queued",
        )


class PowerOfTwo:
    """Two instances drawn at random, the less loaded wins: near least-load balance while
    reading two snapshots, and no herd on the one idlest instance."""

    name, needs_prefix = "power_of_two", False

    def __init__(self, config: PolicyConfig = PolicyConfig()):
        self.config = config
        self._rng = random.Random(config.seed)

    def route(self, req, instances, now, matched={}):  # noqa: B006
        pair = self._rng.sample(range(len(instances)), 2) if len(instances) > 1 else [0]
        snap = _least_loaded([instances[i] for i in sorted(pair)], self.config.max_batched_tokens)
        return RouteDecision(snap.instance_id, matched_blocks=matched.get(snap.instance_id, 0),
                             reason="power of two")  # fmt: skip


class Prefix:
    """The longest cached prefix wins, unless that instance is over its load cap; then the next
    longest, and with no match under the cap, the least loaded."""

    name, needs_prefix = "prefix", True

    def __init__(self, config: PolicyConfig = PolicyConfig()):
        self.config = config

    def route(self, req, instances, now, matched={}):  # noqa: B006
        budget = self.config.max_batched_tokens
        mean = sum(load_tokens(s) for s in instances) / len(instances)
        cap = (1 + self.config.load_slack) * mean + budget
        ranked = sorted(
            range(len(instances)), key=lambda i: -matched.get(instances[i].instance_id, 0)
        )
        for i in ranked:
            snap = instances[i]
            num_matched = matched.get(snap.instance_id, 0)
            if num_matched == 0:
                break
            if load_tokens(snap) <= cap:
                return RouteDecision(
                    snap.instance_id,
                    matched_blocks=num_matched,
                    reason=f"prefix: {num_matched} blocks cached",
                )
        snap = _least_loaded(instances, budget)
        return RouteDecision(
            snap.instance_id,
            matched_blocks=matched.get(snap.instance_id, 0),
            reason="prefix: no match under the load cap, least load",
        )


class Ttft:
    """Minimum estimated TTFT: queue wait + prefill of the uncached suffix, from each instance's
    step times fitted online from its snapshots. Instances without room for the request's KV,
    or above `kv_veto` usage, are skipped while any other remains; among equal estimates the
    one with less decode pressure (KV usage, then running sequences) wins."""

    name, needs_prefix = "ttft", True

    def __init__(self, config: PolicyConfig = PolicyConfig()):
        self.config = config
        self._models: dict[str, OnlineStepModel] = {}
        self._seen: dict[str, float] = {}  # instance_id -> now_s of the last snapshot observed

    def observe(self, snap: InstanceSnapshot) -> OnlineStepModel:
        model = self._models.get(snap.instance_id)
        if model is None:
            model = OnlineStepModel(self.config.prior or DEFAULT_PRIOR)
            self._models[snap.instance_id] = model
        if self._seen.get(snap.instance_id) != snap.now_s:
            self._seen[snap.instance_id] = snap.now_s
            model.observe(snap.step_tokens, snap.step_time_s)
        return model

    def route(self, req, instances, now, matched={}):  # noqa: B006
        budget = self.config.max_batched_tokens
        prompt_len = len(req.prompt_token_ids)
        best_key, best = None, None
        for i, snap in enumerate(instances):
            model = self.observe(snap)
            num_matched = matched.get(snap.instance_id, 0)
            uncached = max(prompt_len - num_matched * snap.block_size, 1)
            est = estimate_ttft_s(snap, uncached, model.step_time, budget)
            blocks_needed = -(-(uncached + req.sampling.max_tokens) // snap.block_size)
            vetoed = snap.num_free_blocks < blocks_needed or snap.kv_usage > self.config.kv_veto
            key = (vetoed, est, snap.kv_usage, snap.num_running, i)
            if best_key is None or key < best_key:
                best_key, best = key, (snap, est, num_matched)
        snap, est, num_matched = best
        return RouteDecision(
            snap.instance_id,
            est,
            num_matched,
            reason=f"ttft: est {est * 1000:.1f} ms, {num_matched} blocks cached",
        )


POLICIES: dict[str, Callable[[PolicyConfig], RoutingPolicy]] = {
    p.name: p for p in (RoundRobin, LeastLoad, PowerOfTwo, Prefix, Ttft)
}
DEFAULT_POLICY = "ttft"


def make_policy(name: str = DEFAULT_POLICY, config: PolicyConfig = PolicyConfig()) -> RoutingPolicy:
    if name not in POLICIES:
        raise ValueError(f"unknown routing policy {name!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[name](config)


def admit(decision: RouteDecision, slo_ttft_s: float | None, margin: float = 0.2) -> bool:
    """SLO admission: refuse (False, answer 429) a request whose best estimated TTFT exceeds the
    SLO by more than `margin`; a decision without an estimate is always admitted."""
    if slo_ttft_s is None or math.isnan(decision.est_ttft_s):
        return True
    return decision.est_ttft_s <= slo_ttft_s * (1 + margin)
