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
from dataclasses import dataclass
from typing import ClassVar, Protocol

from pdserve.cluster.cost_model import OnlineStepModel, StepCostModel
from pdserve.types import InstanceSnapshot, Request, fast_init


@dataclass(frozen=True, slots=True, init=False)
class RouteDecision:
    """Where a request goes. `decode_instance_id` is set only for a (prefill, decode) pair."""

    instance_id: str
    est_ttft_s: float = math.nan  # nan: the policy makes no estimate
    matched_blocks: int = 0  # leading prompt blocks already cached on `instance_id`
    reason: str = ""
    decode_instance_id: str | None = None

    def __init__(  # the mypyc build's (`types.fast_init` replaces it in pure Python)
        self,
        instance_id: str,
        est_ttft_s: float = math.nan,
        matched_blocks: int = 0,
        reason: str = "",
        decode_instance_id: str | None = None,
    ) -> None:
        self.instance_id = instance_id  # type: ignore[misc]
        self.est_ttft_s = est_ttft_s  # type: ignore[misc]
        self.matched_blocks = matched_blocks  # type: ignore[misc]
        self.reason = reason  # type: ignore[misc]
        self.decode_instance_id = decode_instance_id  # type: ignore[misc]


fast_init(RouteDecision)  # one per routed request


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
    # Class attributes (ClassVar: the mypyc build keeps them readable on the class, for POLICIES)
    name: ClassVar[str]
    needs_prefix: ClassVar[bool]  # whether the caller must look the prompt up in the prefix index

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
    # `replace`, as a positional copy of every field in order (replace walks fields() and
    # builds kwargs: ~3x slower); tests/cluster/test_policies_compiled.py checks the copy.
    return InstanceSnapshot(
        snap.instance_id,
        snap.num_waiting + 1,
        snap.num_running,
        snap.num_waiting_tokens + num_tokens,
        snap.num_running_tokens,
        snap.num_free_blocks,
        snap.num_cached_blocks,
        snap.num_total_blocks,
        snap.block_size,
        snap.step_time_s,
        snap.step_tokens,
        snap.num_steps,
        snap.role,
        snap.incarnation,
        snap.now_s,
        snap.kind,
    )


def _load_score(snap: InstanceSnapshot, budget: int) -> float:
    # One step's budget of queued tokens weighs as much as a full KV cache.
    return load_tokens(snap) / budget + snap.kv_usage


def _least_loaded(instances: Sequence[InstanceSnapshot], budget: int) -> InstanceSnapshot:
    return min(instances, key=lambda s: _load_score(s, budget))


def sample_two(rng: random.Random, n: int) -> tuple[int, int]:
    """`rng.sample(range(n), 2)` (n >= 2) drawn the same way, from the same `getrandbits` calls,
    without its generic machinery (about 10x its cost per routed request): CPython's `sample`
    takes `_randbelow(n)` by rejection from `n.bit_length()` random bits, then for n <= 21 the
    second from a pool without the first (index n - 1 moved into its place), else a redraw
    until it differs. tests/cluster/test_policies_compiled.py checks it against `rng.sample`."""
    k = n.bit_length()
    getrandbits = rng.getrandbits
    first = getrandbits(k)
    while first >= n:
        first = getrandbits(k)
    if n <= 21:  # sample's pool path: draw below n - 1 from the pool with `first` replaced
        k = (n - 1).bit_length()
        second = getrandbits(k)
        while second >= n - 1:
            second = getrandbits(k)
        return first, (n - 1 if second == first else second)
    second = getrandbits(k)
    while second >= n or second == first:
        second = getrandbits(k)
    return first, second


class RoundRobin:
    name: ClassVar[str] = "round_robin"
    needs_prefix: ClassVar[bool] = False

    def __init__(self, config: PolicyConfig = PolicyConfig()):
        self._next = 0

    def route(self, req, instances, now, matched={}):  # noqa: B006
        snap = instances[self._next % len(instances)]
        self._next += 1
        return RouteDecision(snap.instance_id, matched_blocks=matched.get(snap.instance_id, 0),
                             reason="round robin")  # fmt: skip


class LeastLoad:
    name: ClassVar[str] = "least_load"
    needs_prefix: ClassVar[bool] = False

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

    name: ClassVar[str] = "power_of_two"
    needs_prefix: ClassVar[bool] = False

    def __init__(self, config: PolicyConfig = PolicyConfig()):
        self.config = config
        self._rng = random.Random(config.seed)

    def route(
        self,
        req: Request,
        instances: Sequence[InstanceSnapshot],
        now: float,
        matched: Mapping[str, int] = {},  # noqa: B006 (read-only)
    ) -> RouteDecision:
        if len(instances) > 1:
            i, j = sample_two(self._rng, len(instances))
            if j < i:
                i, j = j, i
            budget = self.config.max_batched_tokens
            snap, other = instances[i], instances[j]  # read in fleet order
            if _load_score(other, budget) < _load_score(snap, budget):  # a tie: the first
                snap = other
        else:
            snap = instances[0]
        return RouteDecision(snap.instance_id, matched_blocks=matched.get(snap.instance_id, 0),
                             reason="power of two")  # fmt: skip


class PrefixOwners:
    """Long-run demand for placing prefixes no instance holds yet.

    On a lightly loaded fleet every queue is empty when a new prefix first arrives, so load
    alone ties and the first instance in order collects prefix after prefix; each prefix then
    brings its whole stream of requests along. This remembers which instance each recently used
    prefix (keyed by the prompt's first block of tokens) was placed on; a new prefix goes to the
    instance owning the fewest, among those the caller found about as good right now.

    Fed only from the policy's inputs (the request, the decision); bounded: the least recently
    used prefix is forgotten beyond `capacity`. Only dicts (insertion-ordered): deterministic.
    """

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._owner: dict[tuple[int, ...], str] = {}  # prefix key -> instance, least recent first
        self._count: dict[str, int] = {}  # instance_id -> prefixes it owns

    def key(self, req: Request, block_size: int) -> tuple[int, ...] | None:
        """The prefix's key: its first full block (None if the prompt has no cacheable block)."""
        tokens = req.prompt_token_ids
        return tuple(tokens[:block_size]) if len(tokens) > block_size else None

    def owned(self, instance_id: str) -> int:
        return self._count.get(instance_id, 0)

    def owner(self, key: tuple[int, ...] | None) -> str | None:
        return self._owner.get(key) if key is not None else None

    def forget(self, key: tuple[int, ...] | None) -> None:
        """Forget the owner of `key`: it is about to be placed again (no instance holds it)."""
        owner = self._owner.pop(key, None) if key is not None else None
        if owner is not None:
            self._count[owner] -= 1

    def routed(
        self, key: tuple[int, ...] | None, instance_id: str, matched: Mapping[str, int]
    ) -> None:
        """A request of prefix `key` went to `instance_id`. A prefix not owned yet, or whose
        owner holds none of it any more (`matched`), is now owned by `instance_id`; an owned one
        keeps its owner. Either way it becomes the most recently used."""
        if key is None:
            return
        owner = self._owner.pop(key, None)
        if owner is not None and owner != instance_id and not matched.get(owner, 0):
            self._count[owner] -= 1
            owner = None
        if owner is None:
            owner = instance_id
            self._count[owner] = self._count.get(owner, 0) + 1
        self._owner[key] = owner
        if len(self._owner) > self.capacity:
            oldest = next(iter(self._owner))
            self._count[self._owner.pop(oldest)] -= 1


class Prefix:
    """The longest cached prefix wins, unless that instance is over its load cap; then the next
    longest. A prefix nobody holds (or none under the cap) goes to the instance owning the
    fewest prefixes among those within one step's budget of the least load."""

    name: ClassVar[str] = "prefix"
    needs_prefix: ClassVar[bool] = True

    def __init__(self, config: PolicyConfig = PolicyConfig()):
        self.config = config
        self.owners = PrefixOwners()

    def route(self, req, instances, now, matched={}):  # noqa: B006
        budget = self.config.max_batched_tokens
        loads = [load_tokens(s) for s in instances]
        key = self.owners.key(req, instances[0].block_size)
        if matched:
            cap = (1 + self.config.load_slack) * sum(loads) / len(loads) + budget
            owner = self.owners.owner(key)
            best_i, best_rank = -1, (0, False)  # (matched blocks, owns the prefix): larger wins
            for i, snap in enumerate(instances):
                rank = (matched.get(snap.instance_id, 0), snap.instance_id == owner)
                if rank > best_rank and rank[0] and loads[i] <= cap:
                    best_i, best_rank = i, rank
            if best_i >= 0:
                snap, best_matched = instances[best_i], best_rank[0]
                self.owners.routed(key, snap.instance_id, matched)
                return RouteDecision(
                    snap.instance_id,
                    matched_blocks=best_matched,
                    reason=f"prefix: {best_matched} blocks cached",
                )
        else:
            self.owners.forget(key)
        scores = [load / budget + s.kv_usage for load, s in zip(loads, instances)]
        near = min(scores) + 1.0  # one step's budget of queued tokens
        owners = self.owners
        i = min(
            (i for i, score in enumerate(scores) if score <= near),
            key=lambda i: (owners.owned(instances[i].instance_id), scores[i], i),
        )
        snap = instances[i]
        owners.routed(key, snap.instance_id, matched)
        return RouteDecision(
            snap.instance_id,
            matched_blocks=matched.get(snap.instance_id, 0),
            reason="prefix: no match under the load cap, least load and fewest prefixes owned",
        )


class Ttft:
    """Minimum estimated TTFT: queue wait + prefill of the uncached suffix, from step times fitted
    online from the snapshots. Instances of one role and kind (`InstanceSnapshot.kind`: model,
    device, step budget) share one step model: fitted per instance, from each one's own few
    noisy steps, the estimates of identical instances drifted more than `load_slack` apart and
    sent runs of requests to one while the other idled (two CPU workers, 2026-11-27: 10/6, 12/4
    and 11/5 of 16 requests). Instances without room for the request's KV, or above `kv_veto`
    usage, are skipped while any other remains; among equal estimates the one with less decode
    pressure (KV usage, then running sequences) wins. A prefix no instance holds goes, among the
    instances estimated within `load_slack` of the best, to the one owning the fewest prefixes
    (`PrefixOwners`): the first request of a new prefix brings its stream."""

    name: ClassVar[str] = "ttft"
    needs_prefix: ClassVar[bool] = True

    def __init__(self, config: PolicyConfig = PolicyConfig()):
        self.config = config
        self.owners = PrefixOwners()
        self._models: dict[tuple[str, str], OnlineStepModel] = {}  # (role, kind) -> model
        # instance_id -> num_steps (or (step_tokens, step_time_s) without one) of the last step
        # learned from: heartbeats repeat the last step while an instance idles, and a repeat
        # is not a new measurement.
        self._seen: dict[str, int | tuple[int, float]] = {}
        # instance_id -> _SnapTerms of the last snapshot routed over: callers that pass the same
        # (frozen) snapshot object again, as the controller does for an instance whose state
        # did not change, skip observing it and recomputing its queue terms.
        self._terms: dict[str, _SnapTerms] = {}

    def observe(self, snap: InstanceSnapshot) -> OnlineStepModel:
        instance_id = snap.instance_id
        model = self._models.get((snap.role, snap.kind))
        if model is None:
            model = OnlineStepModel(self.config.prior or DEFAULT_PRIOR)
            self._models[snap.role, snap.kind] = model
        # Learn once per step: heartbeats repeat the last step's measurement until the next one.
        step = snap.num_steps or (snap.step_tokens, snap.step_time_s)
        if self._seen.get(instance_id) != step:
            self._seen[instance_id] = step
            model.observe(snap.step_tokens, snap.step_time_s)
            self._terms.pop(instance_id, None)  # its snapshot is not the one learned from now
        return model

    def _snap_terms(self, snap: InstanceSnapshot) -> _SnapTerms:
        """Observe `snap` and compute what of its estimate does not depend on the request."""
        model = self.observe(snap)
        budget = self.config.max_batched_tokens
        decode_tokens = snap.num_running
        prefill_ahead = snap.num_waiting_tokens + max(snap.num_running_tokens - decode_tokens, 0)
        per_step = max(budget - decode_tokens, budget // 8, 1)
        terms = (snap, model.step_time, decode_tokens, prefill_ahead, per_step, snap.kv_usage)
        self._terms[snap.instance_id] = terms
        return terms

    def route(self, req, instances, now, matched={}):  # noqa: B006
        budget = self.config.max_batched_tokens
        kv_veto = self.config.kv_veto
        prompt_len = len(req.prompt_token_ids)
        max_tokens = req.sampling.max_tokens
        get_terms = self._terms.get
        # Every snapshot observed before any estimate: instances of a kind share a step model.
        fleet_terms = []
        for snap in instances:
            terms = get_terms(snap.instance_id)
            if terms is None or terms[0] is not snap:
                terms = self._snap_terms(snap)
            fleet_terms.append(terms)
        rows = []  # (vetoed, est, kv_usage, num_running, i, num_matched)
        for i, terms in enumerate(fleet_terms):
            snap, step_time, decode_tokens, prefill_ahead, per_step, kv_usage = terms
            num_matched = matched.get(snap.instance_id, 0) if matched else 0
            uncached = max(prompt_len - num_matched * snap.block_size, 1)
            # cost_model.estimate_ttft_s(snap, uncached, step_time, budget), its
            # request-independent terms computed once per snapshot
            num_steps = math.ceil((prefill_ahead + uncached) / per_step)
            est = num_steps * step_time(min(budget, decode_tokens + prefill_ahead + uncached))
            blocks_needed = -(-(uncached + max_tokens) // snap.block_size)
            vetoed = snap.num_free_blocks < blocks_needed or kv_usage > kv_veto
            rows.append((vetoed, est, kv_usage, decode_tokens, i, num_matched))
        best = min(rows)
        key = self.owners.key(req, instances[0].block_size)
        if key is not None:
            # Estimates within `load_slack` of the best are as good for this request; the
            # prefix's long-run placement decides among them.
            vetoed, limit = best[0], best[1] * (1 + self.config.load_slack)
            near = [r for r in rows if r[0] == vetoed and r[1] <= limit]
            if not matched:  # a new prefix: the instance owning the fewest
                self.owners.forget(key)
                owned = self.owners.owned
                best = min(near, key=lambda r: (owned(instances[r[4]].instance_id), r))
            elif len(near) > 1:  # a held prefix: stay with its owner while it is near the best
                owner = self.owners.owner(key)
                best = min(near, key=lambda r: (instances[r[4]].instance_id != owner, r))
        snap, est, num_matched = instances[best[4]], best[1], best[5]
        self.owners.routed(key, snap.instance_id, matched)
        return RouteDecision(
            snap.instance_id,
            est,
            num_matched,
            reason=f"ttft: est {est * 1000:.1f} ms, {num_matched} blocks cached",
        )


# (snapshot, its model's step_time, decode tokens, prefill tokens ahead, prefill tokens per step,
#  KV usage): the terms of estimate_ttft_s that depend on the snapshot only
_SnapTerms = tuple[InstanceSnapshot, Callable[[int], float], int, int, int, float]


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
