"""PD pairing and conditional disaggregation as pure functions of snapshots and cost models.

    decode  = the one with the most KV headroom after taking the request, the least running load
    prefill = argmin over p of  TTFT(p)  + transfer(p -> decode)
                                 |         latency + KV bytes the decode lacks / link bandwidth
                                 queue wait + prefill of what p lacks cached (estimate_ttft_s)
    fused   = TTFT(decode) of prefilling there (what the decode lacks cached, behind its load)

    mode "cost":   fused when TTFT(decode) <= TTFT(prefill) + transfer, else the pair; but never
                   fused when the decode instance has running sequences and a step carrying our
                   prefill chunk would exceed `max_decode_step_s` (their TBT budget): the stall
                   a prefill inflicts on running decodes is what disaggregation exists to avoid
    mode "always": the pair whenever a prefill instance is live;  "never": fused on decode

Remote prefix pull (`plan_pull`): when another instance holds more of the prompt's leading
blocks than the chosen one, pull the difference when that is estimated faster than computing it:

    pull_s      = latency + (holder's blocks - target's blocks) x block bytes / bandwidth + overhead
    recompute_s = TTFT(target, without the pull) - TTFT(target, with it)

Torch-free, asyncio-free and clock-free (the simulator can run it): time is in the snapshots,
step times come in as callables, links as `Link`s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pdserve.cluster.cost_model import Link, estimate_ttft_s
from pdserve.types import InstanceSnapshot

MODES = ("cost", "always", "never")
PULL_MODES = ("cost", "always")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One instance as the pairing sees it."""

    snap: InstanceSnapshot
    step_time: Callable[[int], float]  # seconds of a step of that many tokens on this instance
    num_cached_blocks: int = 0  # leading prompt blocks it holds cached (global prefix index)


@dataclass(frozen=True, slots=True)
class PDChoice:
    decode_id: str
    prefill_id: str | None  # None: prefill on the decode instance (fused)
    est_ttft_s: float  # of the chosen way
    est_fused_s: float  # TTFT of prefilling on the decode instance
    est_pair_s: float  # best prefill TTFT + transfer; inf without a prefill instance
    transfer_s: float  # of the best pair
    num_transfer_blocks: int  # blocks the decode instance lacks (sent by the pair)
    reason: str


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def cached_blocks(prompt_len: int, num_matched_blocks: int, block_size: int) -> int:
    """Usable prefix-hit blocks: the last prompt token is always computed (its logits sample)."""
    return min(num_matched_blocks, (prompt_len - 1) // block_size)


def pick_decode(
    decodes: Sequence[Candidate], prompt_len: int, max_tokens: int, max_num_seqs: int = 256
) -> int:
    """Index of the decode instance with the most KV headroom and least running load: instances
    without free blocks for the request's uncached prompt and its outputs are skipped while
    others remain; then min(KV usage after taking it + share of the decode batch in use)."""

    def key(i: int) -> tuple[bool, float, int]:
        c = decodes[i]
        s = c.snap
        bs = s.block_size
        num_needed = cdiv(prompt_len + max_tokens, bs) - cached_blocks(
            prompt_len, c.num_cached_blocks, bs
        )
        lacks_room = s.num_free_blocks < num_needed
        usage_after = 1.0 - (s.num_free_blocks - num_needed) / max(s.num_total_blocks, 1)
        load = (s.num_running + s.num_waiting) / max_num_seqs
        return lacks_room, usage_after + load, i

    return min(range(len(decodes)), key=key)


def decode_stall_step_s(c: Candidate, prompt_len: int, max_batched_tokens: int) -> float:
    """The step time the decode instance's running sequences would see with (a chunk of) the
    prompt's uncached part in it; 0 when nothing runs there (an idle instance stalls nobody)."""
    if c.snap.num_running == 0:
        return 0.0
    num_cached = cached_blocks(prompt_len, c.num_cached_blocks, c.snap.block_size)
    num_uncached = prompt_len - num_cached * c.snap.block_size
    return c.step_time(min(max_batched_tokens, c.snap.num_running + num_uncached))


def prefill_ttft_s(c: Candidate, prompt_len: int, max_batched_tokens: int) -> float:
    """Estimated TTFT of prefilling the prompt on `c`: what it lacks cached, behind its queue."""
    num_cached = cached_blocks(prompt_len, c.num_cached_blocks, c.snap.block_size)
    num_uncached = prompt_len - num_cached * c.snap.block_size
    return estimate_ttft_s(c.snap, num_uncached, c.step_time, max_batched_tokens)


def choose_pd(
    prompt_len: int,
    max_tokens: int,
    prefills: Sequence[Candidate],
    decodes: Sequence[Candidate],
    block_bytes: int,
    link: Callable[[str, str], Link],
    max_batched_tokens: int,
    mode: str = "cost",
    max_decode_step_s: float = math.inf,
) -> PDChoice:
    """The decode instance, and the prefill instance or None (fused on the decode instance).

    `block_bytes`: KV bytes of one block over all layers; `link(prefill_id, decode_id)`."""
    if mode not in MODES:
        raise ValueError(f"unknown disaggregation mode {mode!r}; choose one of {MODES}")
    if not decodes:
        raise ValueError("no decode instance")
    d = decodes[pick_decode(decodes, prompt_len, max_tokens)]
    bs = d.snap.block_size
    num_send = cdiv(prompt_len, bs) - cached_blocks(prompt_len, d.num_cached_blocks, bs)
    fused_s = prefill_ttft_s(d, prompt_len, max_batched_tokens)
    best, best_s, best_xfer = None, math.inf, 0.0
    for p in prefills:
        s = p.snap
        lacks_room = s.num_free_blocks < cdiv(prompt_len, s.block_size)
        xfer_s = link(s.instance_id, d.snap.instance_id).transfer_s(num_send * block_bytes)
        total_s = prefill_ttft_s(p, prompt_len, max_batched_tokens) + xfer_s
        if best is None or (lacks_room, total_s) < best[0]:
            best, best_s, best_xfer = ((lacks_room, total_s), p), total_s, xfer_s
    prefill_id = best[1].snap.instance_id if best is not None else None
    if prefill_id is None or mode == "never":
        why = "no live prefill instance" if prefill_id is None else "mode never"
        prefill_id = None
    elif mode == "always":
        why = "mode always"
    elif (stall_s := decode_stall_step_s(d, prompt_len, max_batched_tokens)) > max_decode_step_s:
        why = (
            f"cost: a step with this prefill would take {stall_s * 1e3:.2f} ms on the decode "
            f"instance > its TBT budget {max_decode_step_s * 1e3:.2f} ms"
        )
    elif fused_s <= best_s:
        why = f"cost: prefill here {fused_s * 1e3:.2f} ms <= pair {best_s * 1e3:.2f} ms"
        prefill_id = None
    else:
        why = f"cost: pair {best_s * 1e3:.2f} ms < prefill here {fused_s * 1e3:.2f} ms"
    return PDChoice(
        d.snap.instance_id,
        prefill_id,
        fused_s if prefill_id is None else best_s,
        fused_s,
        best_s,
        best_xfer,
        num_send,
        why,
    )


@dataclass(frozen=True, slots=True)
class PullPlan:
    """The best holder to pull from, and whether to (`is_pull`): refused plans are returned too,
    so the caller can count the prefix tokens it recomputes instead."""

    holder_id: str
    num_cached_blocks: int  # leading prompt blocks the target holds already
    num_blocks: int  # leading prompt blocks it holds after the pull
    pull_s: float
    recompute_s: float
    is_pull: bool

    @property
    def num_pull_blocks(self) -> int:
        return self.num_blocks - self.num_cached_blocks


def plan_pull(
    prompt_len: int,
    block_size: int,
    target_id: str,
    matched: Mapping[str, int],
    holder_ids: Sequence[str],
    block_bytes: int,
    link: Callable[[str, str], Link],
    ttft_s: Callable[[int], float],
    overhead_s: float = 0.0,
    mode: str = "cost",
) -> PullPlan | None:
    """Whether `target_id` should pull leading prompt blocks from one of `holder_ids`.

    `matched`: instance -> leading prompt blocks cached (the global prefix index);
    `link(holder, target)`; `ttft_s(num_uncached_tokens)`: the target's estimated TTFT when it
    computes that many prompt tokens. None when no holder has more usable blocks than the
    target; otherwise the holder with the largest saving, `is_pull` iff pulling is estimated
    strictly faster than recomputing (or mode "always")."""
    if mode not in PULL_MODES:
        raise ValueError(f"unknown pull mode {mode!r}; choose one of {PULL_MODES}")
    usable = (prompt_len - 1) // block_size  # the last prompt token is always computed
    have = min(matched.get(target_id, 0), usable)
    base_s = None
    best: PullPlan | None = None
    for holder_id in holder_ids:
        num_blocks = min(matched.get(holder_id, 0), usable)
        if holder_id == target_id or num_blocks <= have:
            continue
        if base_s is None:
            base_s = ttft_s(prompt_len - have * block_size)
        recompute_s = base_s - ttft_s(prompt_len - num_blocks * block_size)
        num_bytes = (num_blocks - have) * block_bytes
        pull_s = link(holder_id, target_id).transfer_s(num_bytes) + overhead_s
        is_pull = mode == "always" or pull_s < recompute_s
        plan = PullPlan(holder_id, have, num_blocks, pull_s, recompute_s, is_pull)
        if best is None or _saving(plan) > _saving(best):
            best = plan
    return best


def _saving(plan: PullPlan) -> tuple[bool, float, int]:
    return plan.is_pull, plan.recompute_s - plan.pull_s, plan.num_blocks
