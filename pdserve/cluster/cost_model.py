"""Step time as a function of a step's shape; shared by the controller's `ttft` policy and the
simulator's executor. Pure Python.

    t = base_s
      + per_prefill_token_s    * prefill tokens           (matmuls: compute-bound)
      + per_prefill_pair_s     * prefill attention pairs  (new token x context token it attends)
      + per_decode_seq_s       * decode sequences         (matmuls of one token each)
      + per_decode_ctx_token_s * decode context tokens    (KV bytes read: memory-bound)

Fitted by non-negative least squares from measured (shape, seconds) samples (`fit`), or derived
from the model's shape and the card's specs (`roofline`). The roofline adds compute and memory
time where the hardware overlaps them, so near the ridge point it overestimates (at most 2x,
~10 % for a 2k-token Llama-8B prefill on an H100); a measured profile replaces it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass

FEATURES = ("base", "prefill_tokens", "prefill_pairs", "decode_seqs", "decode_ctx_tokens")


@dataclass(frozen=True, slots=True)
class StepShape:
    num_prefill_tokens: int = 0
    num_prefill_pairs: int = 0  # sum over prefill chunks of new * (computed + (new + 1) / 2)
    num_decode_seqs: int = 0
    num_decode_ctx_tokens: int = 0  # sum of the decode sequences' context lengths

    def features(self) -> tuple[float, ...]:
        return (1.0, self.num_prefill_tokens, self.num_prefill_pairs, self.num_decode_seqs,
                self.num_decode_ctx_tokens)  # fmt: skip


def shape_of(plan) -> StepShape:
    """The shape of a `sched.plan.StepPlan` (duck-typed: seqs with num_computed_tokens,
    num_new_tokens, request.prompt_len). A chunk ending inside the prompt, or a prompt's last
    chunk, is prefill; one new token after the prompt is decode."""
    p_tok = p_pairs = d_seqs = d_ctx = 0
    for seq in plan.seqs:
        new, done = seq.num_new_tokens, seq.num_computed_tokens
        if done + new <= seq.request.prompt_len or new > 1:
            p_tok += new
            p_pairs += new * done + new * (new + 1) // 2
        else:
            d_seqs += 1
            d_ctx += done + 1
    return StepShape(p_tok, p_pairs, d_seqs, d_ctx)


@dataclass(frozen=True, slots=True)
class StepCostModel:
    """Seconds per step; coefficients in seconds per unit of each feature."""

    base_s: float
    per_prefill_token_s: float
    per_prefill_pair_s: float
    per_decode_seq_s: float
    per_decode_ctx_token_s: float

    def step_time(self, shape: StepShape) -> float:
        return (self.base_s + self.per_prefill_token_s * shape.num_prefill_tokens
                + self.per_prefill_pair_s * shape.num_prefill_pairs
                + self.per_decode_seq_s * shape.num_decode_seqs
                + self.per_decode_ctx_token_s * shape.num_decode_ctx_tokens)  # fmt: skip

    def plan_time(self, plan) -> float:
        return self.step_time(shape_of(plan))

    def tokens_time(self, num_tokens: int, context_len: int = 512) -> float:
        """A step of `num_tokens` fresh prefill tokens (one chunk after `context_len` cached)."""
        pairs = num_tokens * context_len + num_tokens * (num_tokens + 1) // 2
        # step_time(StepShape(num_tokens, pairs)) without building the shape (routing's hot path)
        return self.base_s + self.per_prefill_token_s * num_tokens + self.per_prefill_pair_s * pairs

    @property
    def coefficients(self) -> tuple[float, ...]:
        return (self.base_s, self.per_prefill_token_s, self.per_prefill_pair_s,
                self.per_decode_seq_s, self.per_decode_ctx_token_s)  # fmt: skip

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StepCostModel:
        return cls(**{k: float(d[k]) for k in cls.__dataclass_fields__})

    @classmethod
    def fit(cls, shapes: Sequence[StepShape], times_s: Sequence[float]) -> StepCostModel:
        """Non-negative least squares on relative errors (each sample's row and time divided by
        its time, so a 7 ms decode step counts as much as a 50 ms prefill step), in two stages
        when there are at least 3 steps of each kind: the fixed and decode terms from the
        decode-only steps, then the prefill terms from what those leave of the other steps.
        A feature never seen gets 0.

        Why: decode steps (what TPOT is made of) run another way than prefill and mixed steps
        (a CUDA graph against eager kernels on a GPU); one joint fit let the mixed steps' cost
        leak into the decode context term (5x its measured slope on an H100) and put simulated
        TPOT up to 2x off."""
        if len(shapes) != len(times_s) or not shapes:
            raise ValueError(f"need one time per shape, got {len(shapes)} shapes, {len(times_s)}")
        if any(t <= 0 for t in times_s):
            raise ValueError("step times must be > 0")
        decode = [(s, t) for s, t in zip(shapes, times_s) if not s.num_prefill_tokens]
        prefill = [(s, t) for s, t in zip(shapes, times_s) if s.num_prefill_tokens]
        if len(decode) < 3 or len(prefill) < 3:
            rows = [[f / t for f in s.features()] for s, t in zip(shapes, times_s)]
            return cls(*nnls(rows, [1.0] * len(rows)))
        rows = [[f / t for f in s.features()] for s, t in decode]
        base, _, _, per_seq, per_ctx = nnls(rows, [1.0] * len(rows))
        rows = [[s.num_prefill_tokens / t, s.num_prefill_pairs / t] for s, t in prefill]
        rest = [
            (t - base - per_seq * s.num_decode_seqs - per_ctx * s.num_decode_ctx_tokens) / t
            for s, t in prefill
        ]
        per_token, per_pair = nnls(rows, rest)
        return cls(base, per_token, per_pair, per_seq, per_ctx)

    @classmethod
    def roofline(
        cls, model, flops: float, bandwidth_bps: float, step_overhead_s: float = 1e-3
    ) -> StepCostModel:
        """From a `config.ModelConfig` and a card's dense bf16 FLOP/s and memory bytes/s.
        Weights are read once per step (bf16); every token costs 2 FLOPs per weight; attention
        costs 4 * head_dim FLOPs per (query, key) pair per head per layer."""
        from pdserve.bench.floor import matmul_params  # torch-free; one definition of params

        params = matmul_params(model)
        attn_flops = 4 * model.num_layers * model.num_heads * model.head_dim
        return cls(
            base_s=step_overhead_s + 2 * params / bandwidth_bps,
            per_prefill_token_s=2 * params / flops,
            per_prefill_pair_s=attn_flops / flops,
            per_decode_seq_s=2 * params / flops,
            per_decode_ctx_token_s=model.kv_bytes_per_token / bandwidth_bps,
        )


def nnls(rows: Sequence[Sequence[float]], ys: Sequence[float]) -> list[float]:
    """Least squares with every coefficient >= 0: solve, clamp the most negative to 0, repeat.
    Columns are scaled to max 1 first (features span 1 to 1e7)."""
    num_cols = len(rows[0])
    scale = [max((abs(r[j]) for r in rows), default=0.0) or 1.0 for j in range(num_cols)]
    active = [j for j in range(num_cols) if any(r[j] for r in rows)]
    while True:
        x = _lstsq([[r[j] / scale[j] for j in active] for r in rows], ys)
        worst = min(range(len(active)), key=lambda i: x[i], default=None)
        if worst is None or x[worst] >= 0:
            break
        active.pop(worst)
    out = [0.0] * num_cols
    for j, value in zip(active, x):
        out[j] = value / scale[j]
    return out


def _lstsq(a: list[list[float]], y: Sequence[float]) -> list[float]:
    """Normal equations (A^T A + tiny ridge) x = A^T y by Gaussian elimination with pivoting."""
    n = len(a[0]) if a else 0
    m = [[sum(r[i] * r[j] for r in a) + (1e-12 if i == j else 0.0) for j in range(n)]
         + [sum(r[i] * v for r, v in zip(a, y))] for i in range(n)]  # fmt: skip
    for col in range(n):
        pivot = max(range(col, n), key=lambda i: abs(m[i][col]))
        m[col], m[pivot] = m[pivot], m[col]
        if abs(m[col][col]) < 1e-300:
            continue
        for i in range(n):
            if i != col and m[i][col]:
                f = m[i][col] / m[col][col]
                m[i] = [a_ij - f * p for a_ij, p in zip(m[i], m[col])]
    return [m[i][n] / m[i][i] if abs(m[i][i]) >= 1e-300 else 0.0 for i in range(n)]


class OnlineStepModel:
    """Per-instance step time `a + b * num_tokens`, refitted from the last `window` measured
    (tokens, seconds) pairs of an instance's snapshots; the prior holds until the samples span
    at least two token counts.

    The fit answers up to the largest step measured; beyond it the prior's cost of the extra
    tokens is added. A fleet that mostly decodes measures steps of a few tokens, whose slope
    (a few noisy samples over a narrow range) says little about a 300-token prefill: a slope
    fitted that way and extended far past its data made such instances look cheap."""

    def __init__(self, prior: StepCostModel, window: int = 64):
        self.prior = prior
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)
        # (a, b, largest tokens measured, the fit there - the prior there); None: the prior holds
        self._fit: tuple[float, float, int, float] | None = None
        self._stale = False  # samples arrived since `_fit` was computed

    def observe(self, num_tokens: int, step_time_s: float) -> None:
        if num_tokens <= 0 or not step_time_s > 0:
            return
        self._samples.append((num_tokens, step_time_s))
        self._stale = True

    def step_time(self, num_tokens: int) -> float:
        if self._stale:
            self._fit, self._stale = self._refit(), False
        if self._fit is None:
            return self.prior.tokens_time(num_tokens)
        a, b, max_tokens, offset = self._fit
        if num_tokens <= max_tokens:
            return a + b * num_tokens
        return offset + self.prior.tokens_time(num_tokens)

    def _refit(self) -> tuple[float, float, int, float] | None:
        n = len(self._samples)
        if n < 2:
            return None
        mx = sum(x for x, _ in self._samples) / n
        my = sum(y for _, y in self._samples) / n
        sxx = sum((x - mx) ** 2 for x, _ in self._samples)
        if sxx == 0:
            return None
        b = max(sum((x - mx) * (y - my) for x, y in self._samples) / sxx, 0.0)
        a = max(my - b * mx, 0.0)
        max_tokens = max(x for x, _ in self._samples)
        return a, b, max_tokens, a + b * max_tokens - self.prior.tokens_time(max_tokens)


@dataclass(frozen=True, slots=True)
class Link:
    """The network path between two instances' KV caches: moving `n` bytes takes
    latency_s + n / bandwidth_bps seconds (nothing to move takes no time)."""

    bandwidth_bps: float  # bytes per second
    latency_s: float = 0.0

    def transfer_s(self, num_bytes: int) -> float:
        return self.latency_s + num_bytes / self.bandwidth_bps if num_bytes > 0 else 0.0


def estimate_ttft_s(snap, num_uncached_tokens: int, step_time, max_batched_tokens: int) -> float:
    """Queue wait + prefill of the uncached suffix on one fused instance, in seconds.

    Every running sequence takes about one token of each step's budget; the rest of the budget
    serves prefill in FCFS order: the waiting prompts and unfinished chunks ahead, then ours.
    `step_time(num_tokens)` gives the seconds of a step of that many tokens."""
    decode_tokens = snap.num_running
    prefill_ahead = snap.num_waiting_tokens + max(snap.num_running_tokens - snap.num_running, 0)
    per_step = max(max_batched_tokens - decode_tokens, max_batched_tokens // 8, 1)
    num_steps = math.ceil((prefill_ahead + num_uncached_tokens) / per_step)
    step_tokens = min(max_batched_tokens, decode_tokens + prefill_ahead + num_uncached_tokens)
    return num_steps * step_time(step_tokens)
