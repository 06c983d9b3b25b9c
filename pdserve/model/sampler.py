"""Token sampling for a batch of sequences, on whatever device the logits live.

Per-request seeds use one torch.Generator per request, so a seeded request draws the same noise
whatever else is in the batch. Sampling is the exponential race: argmax(p / q) with q ~ Exp(1)
picks token i with probability p_i, and needs no cumulative sums or host synchronization.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pdserve.types import SamplingParams

_NEG_INF = float("-inf")


@dataclass(slots=True)
class SeqSampling:
    """One row of the batch: its params, its token history (for penalties), its generator."""

    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]
    generator: torch.Generator | None  # None: draw from the sampler's shared generator
    suppressed_token_ids: Sequence[int] = ()  # e.g. EOS while fewer than min_tokens


def apply_penalties(logits: torch.Tensor, rows: Sequence[SeqSampling]) -> torch.Tensor:
    """Repetition (HF: over prompt and output), presence and frequency (OpenAI: over output)."""
    vocab = logits.shape[1]
    for i, row in enumerate(rows):
        p = row.params
        if not p.needs_penalties:
            continue
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(
                [*row.prompt_token_ids, *row.output_token_ids], device=logits.device
            ).unique()
            picked = logits[i, seen]
            logits[i, seen] = torch.where(
                picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty
            )
        if row.output_token_ids and (p.presence_penalty or p.frequency_penalty):
            out = torch.tensor(row.output_token_ids, device=logits.device)
            counts = torch.zeros(vocab, device=logits.device).scatter_add_(
                0, out, torch.ones_like(out, dtype=torch.float32)
            )
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()
    return logits


def _top_k_top_p_min_p(logits: torch.Tensor, rows: Sequence[SeqSampling]) -> torch.Tensor:
    top_ks = [r.params.top_k if r.params.top_k > 0 else 0 for r in rows]
    top_ps = [r.params.top_p for r in rows]
    min_ps = [r.params.min_p for r in rows]
    device = logits.device
    if any(top_ks) or any(p < 1.0 for p in top_ps):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        vocab = logits.shape[1]
        ranks = torch.arange(vocab, device=device)[None, :]
        k = torch.tensor([k or vocab for k in top_ks], device=device)[:, None]
        drop = ranks >= k
        probs = sorted_logits.masked_fill(drop, _NEG_INF).softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p: drop tokens whose preceding mass
        # already does (the most likely token always stays).
        mass_before = probs.cumsum(dim=-1) - probs
        drop |= mass_before >= torch.tensor(top_ps, device=device)[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, _NEG_INF)
        logits = torch.empty_like(logits).scatter_(1, order, sorted_logits)
    if any(min_ps):
        probs = logits.softmax(dim=-1)
        threshold = (
            torch.tensor(min_ps, device=device)[:, None] * probs.max(dim=-1, keepdim=True)[0]
        )
        logits = logits.masked_fill(probs < threshold, _NEG_INF)
    return logits


class Sampler:
    def __init__(self, seed: int = 0, device: torch.device | str = "cpu"):
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, rows: Sequence[SeqSampling]) -> torch.Tensor:
        """logits: [N, vocab] float32 (modified in place) -> sampled token ids [N] int64."""
        for i, row in enumerate(rows):
            if row.suppressed_token_ids:
                logits[i, list(row.suppressed_token_ids)] = _NEG_INF
        logits = apply_penalties(logits, rows)
        greedy = logits.argmax(dim=-1)
        random_rows = [i for i, r in enumerate(rows) if not r.params.is_greedy]
        if not random_rows:
            return greedy
        sub_rows = [rows[i] for i in random_rows]
        index = torch.tensor(random_rows, device=logits.device)
        temps = torch.tensor([r.params.temperature for r in sub_rows], device=logits.device)
        sub = _top_k_top_p_min_p(logits[index] / temps[:, None], sub_rows)
        probs = sub.softmax(dim=-1)
        noise = torch.empty_like(probs)
        unseeded = [j for j, r in enumerate(sub_rows) if r.generator is None]
        if unseeded:
            noise[unseeded] = torch.empty(
                (len(unseeded), probs.shape[1]), device=probs.device
            ).exponential_(generator=self.generator)
        for j, r in enumerate(sub_rows):
            if r.generator is not None:
                noise[j].exponential_(generator=r.generator)
        sampled = (probs / noise).argmax(dim=-1)
        return greedy.index_copy(0, index, sampled)
