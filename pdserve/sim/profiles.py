"""Cost profiles: a device + model's step-time model and KV capacity, as JSON files.

    {"name", "kind": "measured" | "roofline", "device", "model", "note",
     "block_size", "num_blocks", "kv_bytes_per_token", "max_num_batched_tokens", "max_num_seqs",
     "cost": StepCostModel fields (seconds), "samples": [{"shape": [4 ints], "time_s"}] (measured)}

Shipped profiles live in pdserve/sim/profiles/; `pdserve profile` writes measured ones. A card
with no profile gets a roofline one from its specs (`roofline_profile`).
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

from pdserve.cluster.cost_model import StepCostModel, StepShape, nnls

PROFILE_DIR = Path(__file__).parent / "profiles"


@dataclass(frozen=True, slots=True)
class CardSpec:
    flops: float  # dense bf16 matmul FLOP/s
    bandwidth_bps: float  # memory copy bytes/s
    memory_gib: float
    cost_per_hour: float  # default $ per GPU-hour (on-demand cloud list prices, 2025)


# H100: measured on the project's card (3014 GB/s copy, 784 TFLOP/s bf16 matmul). The others are
# scaled from the H100's measured/nominal ratio (0.9 of nominal bandwidth, 0.8 of dense peak).
CARDS = {
    "h100": CardSpec(784e12, 3014e9, 80, 2.5),
    "h200": CardSpec(784e12, 4300e9, 141, 3.5),
    "a100": CardSpec(250e12, 1800e9, 80, 1.6),
    "l40s": CardSpec(290e12, 780e9, 48, 1.0),
}
DEFAULT_MODEL = "llama-3.1-8b"
NUM_LAUNCH_QUANTILES = 21  # an eager step's host time: its 0, 5, ..., 100 % quantiles
DEVICE_BOUND = 1.2  # a step whose device span is this much over its host time: device-bound


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    kind: str
    cost: StepCostModel
    block_size: int
    num_blocks: int
    kv_bytes_per_token: int
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    device: str = ""
    model: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        return cls(d["name"], d["kind"], cost_from_dict(d["cost"]), int(d["block_size"]),
                   int(d["num_blocks"]), int(d["kv_bytes_per_token"]),
                   int(d.get("max_num_batched_tokens", 2048)), int(d.get("max_num_seqs", 256)),
                   d.get("device", ""), d.get("model", ""))  # fmt: skip


@dataclass(frozen=True, slots=True)
class ServedCostModel(StepCostModel):
    """A step's time as a serving engine runs it: decode-only steps as `StepCostModel`, and a
    step that prefills in another way than a linear sum of its parts:

        decode only:   base + per_decode_seq * seqs + per_decode_ctx_token * ctx
                       (+ single_seq_s when seqs == 1)
        with prefill:  max(prefill_floor_s, base + prefill_base_s + per_prefill_token * tokens
                           + per_prefill_pair * pairs + per_mixed_seq_s * seqs
                           + per_mixed_ctx_token_s * ctx)

    Why: on a GPU decode-only steps replay a CUDA graph while a step with prefill launches its
    kernels one by one (eager): its fixed cost differs (prefill_base_s, of either sign), and the
    host launching ~500 kernels takes ~13 ms on an H100 for Llama-8B, longer than the device
    needs for a prompt of up to ~600 tokens: such steps take the host's time whatever their
    size (prefill_floor_s; the measured profile shows 16- to 512-token prefills all at 13-14 ms).
    On a CPU a lone decode row multiplies the weights as a matrix-vector product, at about
    half the cost of any batched step, which repacks the weights (the embedded SmolLM2 on one
    thread: 1 seq ~100 ms, 2 to 8 seqs ~190-230 ms): single_seq_s < 0; ~0 on a GPU's graphs.
    A decode seq inside a prefill step is one more row of the same matmuls (per_mixed_seq_s,
    fitted as per_prefill_token_s), not a graph's per-seq cost, and its attention runs in the
    prefill kernel (per_mixed_ctx_token_s: 4x the decode kernel's per context token in the H100
    profile). On a CPU the floor is 0. A plain `StepCostModel` is this with prefill_base_s =
    prefill_floor_s = 0, per_mixed_seq_s = per_decode_seq_s and per_mixed_ctx_token_s =
    per_decode_ctx_token_s."""

    prefill_base_s: float = 0.0
    prefill_floor_s: float = 0.0
    per_mixed_seq_s: float = 0.0
    per_mixed_ctx_token_s: float = 0.0
    # The engine launches a step while the one before runs (async scheduling, a GPU server's
    # default): a step's host-bound floor then overlaps the step before it (`shape_time`).
    pipelined: bool = False
    single_seq_s: float = 0.0
    # Host/device split of a pipelined engine (`fit_split`, from a GPU profile's host and device
    # times; 0 / () = not measured): a decode step's host time (prepare + graph replay launch),
    # and an eager step's host time (prepare + ~500 kernel launches) as evenly spaced quantiles
    # of its measured distribution (it is jitter, not a function of the shape: 13 to 90 ms on
    # the project's H100 box for any prefill size); `prefill_floor_s` is their mean.
    graph_launch_s: float = 0.0
    launch_quantiles_s: tuple[float, ...] = ()
    # A decode step's measured miss of the line per batch size (`with_decode_table`; () = none),
    # linear between the measured sizes, the nearest one's outside them.
    decode_batches: tuple[int, ...] = ()
    decode_residual_s: tuple[float, ...] = ()

    def step_time(self, shape: StepShape) -> float:
        return self.shape_time(shape.num_prefill_tokens, shape.num_prefill_pairs,
                               shape.num_decode_seqs, shape.num_decode_ctx_tokens)  # fmt: skip

    def shape_time(
        self, p_tok: int, p_pairs: int, d_seqs: int, d_ctx: int, overlap_s: float = 0.0
    ) -> float:
        """Seconds of a step of that shape; `overlap_s`: the step before it, when this one
        started as that one ended (a pipelined engine launched it meanwhile: of its floor, what
        the host did then is hidden)."""
        if not p_tok:
            return self.decode_time(d_seqs, d_ctx)
        t = (self.base_s + self.prefill_base_s + self.per_prefill_token_s * p_tok
             + self.per_prefill_pair_s * p_pairs + self.per_mixed_seq_s * d_seqs
             + self.per_mixed_ctx_token_s * d_ctx)  # fmt: skip
        floor = self.prefill_floor_s - overlap_s if self.pipelined else self.prefill_floor_s
        return t if t > floor else floor

    def tokens_time(self, num_tokens: int, context_len: int = 512) -> float:
        pairs = num_tokens * context_len + num_tokens * (num_tokens + 1) // 2
        return self.shape_time(num_tokens, pairs, 0, 0) if num_tokens else self.base_s

    def decode_time(self, d_seqs: int, d_ctx: int) -> float:
        """A decode-only step: the line, a lone row's own cost, the batch size's measured miss."""
        t = self.base_s + self.per_decode_seq_s * d_seqs + self.per_decode_ctx_token_s * d_ctx
        if d_seqs == 1:
            t += self.single_seq_s
        sizes = self.decode_batches
        if not sizes:
            return t
        res = self.decode_residual_s
        if d_seqs <= sizes[0]:
            return t + res[0]
        if d_seqs >= sizes[-1]:
            return t + res[-1]
        i = bisect_right(sizes, d_seqs)  # sizes[i - 1] <= d_seqs < sizes[i]
        lo, hi = sizes[i - 1], sizes[i]
        return t + res[i - 1] + (res[i] - res[i - 1]) * (d_seqs - lo) / (hi - lo)

    def device_time(self, p_tok: int, p_pairs: int, d_seqs: int, d_ctx: int) -> float:
        """Seconds the device computes a step of that shape, the host's floor left out (a
        pipelined engine's steps: `host_time` says when the host has launched it all)."""
        if not p_tok:
            return self.decode_time(d_seqs, d_ctx)
        return (self.base_s + self.prefill_base_s + self.per_prefill_token_s * p_tok
                + self.per_prefill_pair_s * p_pairs + self.per_mixed_seq_s * d_seqs
                + self.per_mixed_ctx_token_s * d_ctx)  # fmt: skip

    def host_time(self, p_tok: int, u: float | None = None) -> float:
        """Seconds the host takes to prepare and launch a step (a pipelined engine): a decode
        step `graph_launch_s`, a step that prefills `prefill_floor_s` (the mean), or with `u`
        in [0, 1) the `u`-quantile of its measured distribution (host jitter drawn)."""
        if not p_tok:
            return self.graph_launch_s
        q = self.launch_quantiles_s
        if u is None or not q:
            return self.prefill_floor_s
        x = u * (len(q) - 1)  # linear between the evenly spaced quantiles
        i = min(int(x), len(q) - 2) if len(q) > 1 else 0
        return q[i] + (q[i + 1] - q[i]) * (x - i) if len(q) > 1 else q[0]

    @classmethod
    def of(cls, cost: StepCostModel, **changes: float | bool | tuple) -> ServedCostModel:
        """`cost` as a ServedCostModel (a plain model: its decode seq cost inside prefills too)."""
        base = {f.name: getattr(cost, f.name) for f in fields(StepCostModel)}
        if not isinstance(cost, ServedCostModel):
            base["per_mixed_seq_s"] = cost.per_decode_seq_s
            base["per_mixed_ctx_token_s"] = cost.per_decode_ctx_token_s
        else:
            base |= {f: getattr(cost, f) for f in (*SERVED_FIELDS, *OTHER_FIELDS)}
        return cls(**(base | changes))

    @classmethod
    def fit(cls, shapes: Sequence[StepShape], times_s: Sequence[float]) -> StepCostModel:
        """Relative least squares as `StepCostModel.fit`, decode terms from the decode-only
        steps, then the prefill terms and the floor from the steps that prefill: for each
        candidate floor (0, or one of those steps' times), the linear part is fitted to the
        steps above it by least absolute relative deviations, one vote per step size,
        refitted without those it misses
        by more than `OUTLIER` (an H100 profile had a whole repeat of small prefills 50 %
        slower), and the floor kept whose
        model misses all of them least (the sum of relative misses, each counted up to
        `OUTLIER`: a floor among noisy steps lands at their median). With fewer than 3
        steps of either kind: `StepCostModel.fit`."""
        decode = [(s, t) for s, t in zip(shapes, times_s) if not s.num_prefill_tokens]
        prefill = [(s, t) for s, t in zip(shapes, times_s) if s.num_prefill_tokens]
        if len(decode) < 3 or len(prefill) < 3 or any(t <= 0 for t in times_s):
            return StepCostModel.fit(shapes, times_s)
        # columns: fixed, seqs, context, a lone seq + and - (only when both kinds were measured)
        singles = {s.num_decode_seqs == 1 for s, _ in decode} == {True, False}
        rows = []
        for s, t in decode:
            row = [1 / t, s.num_decode_seqs / t, s.num_decode_ctx_tokens / t]
            lone = float(s.num_decode_seqs == 1) / t
            rows.append(row + [lone, -lone] if singles else row)
        x = nnls(rows, [1.0] * len(rows))
        base, per_seq, per_ctx = x[:3]
        single = x[3] - x[4] if singles else 0.0
        has_mixed = any(s.num_decode_seqs for s, _ in prefill)

        def fit_linear(steps, floor: float) -> ServedCostModel:
            """Least absolute relative deviations (reweighted least squares), each step size
            (prefill tokens, decode seqs) weighing as much as any other however many times the
            grid ran it: the line of the majority of sizes, whatever a minority of noisy steps
            says, and not of the many long chunks a big decode batch's prompts make."""
            # columns: fixed cost +, fixed cost -, tokens (decode seqs included), pairs, decode
            # context (its column only when some step has one)
            rows, ys = [], []
            for s, t in steps:
                row = [1 / t, -1 / t, (s.num_prefill_tokens + s.num_decode_seqs) / t,
                       s.num_prefill_pairs / t]  # fmt: skip
                rows.append(row + [s.num_decode_ctx_tokens / t] if has_mixed else row)
                ys.append((t - base) / t)
            counts = Counter((s.num_prefill_tokens, s.num_decode_seqs) for s, _ in steps)
            size_weights = [1 / counts[s.num_prefill_tokens, s.num_decode_seqs] for s, _ in steps]
            weights = size_weights
            for _ in range(IRLS_ROUNDS):
                x = nnls([[w * v for v in r] for r, w in zip(rows, weights)],
                         [w * y for y, w in zip(ys, weights)])  # fmt: skip
                weights = [sw / max(abs(y - sum(a * b for a, b in zip(r, x))), 1e-3) ** 0.5
                           for r, y, sw in zip(rows, ys, size_weights)]  # fmt: skip
            return cls(base, x[2], x[3], per_seq, per_ctx, x[0] - x[1], floor, x[2],
                       x[4] if has_mixed else per_ctx, False, single)  # fmt: skip

        def misses(model, steps) -> list[float]:
            return [abs(model.step_time(s) - t) / t for s, t in steps]

        times = sorted({t for _, t in prefill})
        step = max(len(times) // 64, 1)  # at most ~64 candidate floors
        best = None
        for floor in [0.0] + times[:-2:step]:
            # The line prices the steps it puts above the floor: chosen by their size, not by
            # their time (a small step slowed by noise is still a floor step).
            model = fit_linear(prefill, floor)
            for _ in range(3):
                above = [(s, t) for s, t in prefill if model.step_time(s) > floor * 1.0001]
                kept = [st for st, m in zip(above, misses(model, above)) if m <= OUTLIER]
                if len(kept) < 3:
                    break
                model = fit_linear(kept, floor)
            loss = sum(min(m, OUTLIER) for m in misses(model, prefill))  # the floor: a median
            if best is None or loss < best[0] - 1e-12:
                best = (loss, model)
        assert best is not None  # the candidates include floor 0
        return best[1]

    def with_decode_table(
        self, shapes: Sequence[StepShape], times_s: Sequence[float]
    ) -> ServedCostModel:
        """This model with its decode steps' median miss (seconds) per measured batch size.

        Why: a decode step's cost is not linear in its batch on every device: the embedded
        model on one CPU thread takes 128 / 190 / 240 / 323 / 378 ms at 1 / 2 / 4 / 8 / 16
        sequences (a line misses 2 and 8 by 4 %), and served steps of 3 and 5 sequences
        took 250 and 292 ms (odd row counts in the CPU's GEMM); a GPU's graphs are captured at
        padded sizes (5 to 8 sequences cost the same). A profile whose grid has the sizes a
        workload runs (`--batch-sizes 1,2,3,4,5,6,8,12,16`) prices them as measured."""
        misses: dict[int, list[float]] = {}
        for shape, t in zip(shapes, times_s):
            if not shape.num_prefill_tokens and shape.num_decode_seqs:
                miss = t - self.decode_time(shape.num_decode_seqs, shape.num_decode_ctx_tokens)
                misses.setdefault(shape.num_decode_seqs, []).append(miss)
        sizes = tuple(sorted(misses))
        return replace(self, decode_batches=sizes,
                       decode_residual_s=tuple(_median(misses[b]) for b in sizes))  # fmt: skip

    @classmethod
    def fit_split(
        cls,
        shapes: Sequence[StepShape],
        host_s: Sequence[float],
        device_s: Sequence[float],
        num_quantiles: int = NUM_LAUNCH_QUANTILES,
    ) -> ServedCostModel:
        """A pipelined (async scheduling) GPU engine's model from a profile's host and device
        times per step (`pdserve profile` on a GPU): `fit` on the device spans, the floor the
        mean host time of the steps that prefill, their distribution as quantiles, and the
        decode steps' host time (median).

        Why: a pipelined engine prepares and launches step N+1 while the device runs step N, so
        a decode step (a CUDA graph, ~0.6 ms of host time) takes its device time alone (6.4 ms
        served where the profile's synchronous step took 7.7), and a step that prefills takes
        the host's launch time when that is longer than its device time (the device line is
        fitted to the steps whose span is `DEVICE_BOUND` times their launch: a host-bound
        step's span only says how long its launch took). That launch time is
        jitter, whatever the step's size (an H100 profile: 13 to 90 ms, mean 24, for 16 to
        2,048 tokens), so the floor is its mean, not the fit's robust floor (its most common
        value, 16 ms): the mean is what mean TTFT sees, the quantiles what its tail sees."""
        if not (len(shapes) == len(host_s) == len(device_s)):
            raise ValueError("need one host and one device time per shape")
        # The device line from the steps the device set: a host-bound step's span is its launch.
        bound = [(s, d) for s, h, d in zip(shapes, host_s, device_s)
                 if not s.num_prefill_tokens or d > DEVICE_BOUND * h]  # fmt: skip
        if sum(1 for s, _ in bound if s.num_prefill_tokens) < 3:
            bound = list(zip(shapes, device_s))
        model = cls.fit([s for s, _ in bound], [d for _, d in bound])
        decode_host = sorted(h for s, h in zip(shapes, host_s) if not s.num_prefill_tokens)
        launch = sorted(h for s, h in zip(shapes, host_s) if s.num_prefill_tokens)
        if not isinstance(model, ServedCostModel) or not launch or not decode_host:
            raise ValueError("fit_split needs decode-only steps and steps that prefill")
        n = max(num_quantiles, 2)
        quantiles = tuple(_quantile(launch, k / (n - 1)) for k in range(n))
        return replace(model, prefill_floor_s=sum(launch) / len(launch), pipelined=True,
                       graph_launch_s=_quantile(decode_host, 0.5),
                       launch_quantiles_s=quantiles)  # fmt: skip


def _median(xs: Sequence[float]) -> float:
    return _quantile(sorted(xs), 0.5)


def _quantile(xs: Sequence[float], q: float) -> float:
    """The q-quantile of sorted `xs`, linear between order statistics."""
    x = q * (len(xs) - 1)
    i = min(int(x), len(xs) - 1)
    return xs[i] + (xs[i + 1] - xs[i]) * (x - i) if i + 1 < len(xs) else xs[i]


@dataclass(slots=True)
class AsyncPipeline:
    """When the steps of an engine with async scheduling (`engine.core.EngineCore`, a GPU
    server's default) finish, from a `ServedCostModel`'s host and device times. Each engine
    call schedules and launches step N+1, then waits for step N and applies its tokens:

        host:   |sched N+1|--- launch N+1 ---|wait N|  |sched N+2|-- launch N+2 --|wait N+1|
        device: ...... N ......|  N+1 (eager: as its kernels arrive; a graph: once launched) |
                               ^ N's tokens are out when both N is done and N+1 launched

    So a step's tokens wait for the next step's launch (a long eager launch delays the decode
    step before it), and a request that arrives while step N-1 runs is scheduled into step
    N+1 (N was scheduled when N-1 started): one step later than a synchronous engine.
    `launch` prices one call; the simulated instance keeps the step in flight."""

    cost: ServedCostModel
    device_free_s: float = 0.0  # when the device finishes the last launched step

    def launch(
        self, now: float, shape: tuple[int, int, int, int], u: float | None = None
    ) -> tuple[float, float]:
        """A step of `shape` (prefill tokens, pairs, decode seqs, decode context) scheduled at
        `now`: -> (when its launch ends, when the device finishes it)."""
        launched_s = now + self.cost.host_time(shape[0], u)
        device_s = self.cost.device_time(*shape)
        if shape[0]:  # eager: its kernels run as they are launched, the last one when launched
            end = max(max(self.device_free_s, now) + device_s, launched_s)
        else:  # a graph: one launch of the whole step
            end = max(self.device_free_s, launched_s) + device_s
        self.device_free_s = end
        return launched_s, end

    @staticmethod
    def collected_s(launched_s: float, in_flight_end_s: float | None) -> float:
        """When a call that launched until `launched_s` has the step in flight's tokens out
        (None: no step was in flight; the call returns after its launch)."""
        if in_flight_end_s is None:
            return launched_s
        return max(in_flight_end_s, launched_s)


IRLS_ROUNDS = 8
OUTLIER = 0.2  # a step the fit misses by more than this (relative) is noise, not the model's
SERVED_FIELDS = ("prefill_base_s", "prefill_floor_s", "per_mixed_seq_s", "per_mixed_ctx_token_s",
                 "single_seq_s", "graph_launch_s")  # fmt: skip
OTHER_FIELDS = ("pipelined", "launch_quantiles_s", "decode_batches", "decode_residual_s")


def cost_from_dict(d: dict) -> StepCostModel:
    """A profile's "cost": a `ServedCostModel` when it has the served fields."""
    if any(k in d for k in SERVED_FIELDS):
        base = StepCostModel.from_dict(d)
        served = {k: float(d[k]) for k in SERVED_FIELDS if k in d}
        tables = {
            "launch_quantiles_s": tuple(float(v) for v in d.get("launch_quantiles_s", ())),
            "decode_batches": tuple(int(v) for v in d.get("decode_batches", ())),
            "decode_residual_s": tuple(float(v) for v in d.get("decode_residual_s", ())),
        }
        return ServedCostModel.of(base, **served, **tables,
                                  pipelined=bool(d.get("pipelined", False)))  # fmt: skip
    return StepCostModel.from_dict(d)


def with_corrections(
    cost: StepCostModel,
    decode_s: float = 0.0,
    prefill_s: float = 0.0,
    scale: float = 1.0,
    pipelined: bool | None = None,
) -> ServedCostModel:
    """`cost` with every step `scale` times as long, then every decode-only step `decode_s`
    longer and every step that prefills `prefill_s` longer (offsets may be < 0): what a
    serving engine's steps take beyond the profile's. The offsets: the worker loop's time, or
    host work a pipelined engine hides behind the device; the scale: a CPU engine's share of
    its core against the profile's (a CPU shared with other work runs every step slower);
    `pipelined`: whether the engine overlaps steps (None: as `cost`). A split model (measured
    host launches, `fit_split`): `prefill_s` moves the host's launch of a step that prefills
    (the served engine's launches against the profile's), not its device time."""
    served = ServedCostModel.of(cost)
    scaled = {f.name: getattr(served, f.name) * scale for f in fields(ServedCostModel)
              if f.name not in OTHER_FIELDS}  # fmt: skip
    floor = scaled["prefill_floor_s"]
    device_s = 0.0 if served.launch_quantiles_s else prefill_s
    return replace(served, **scaled | {
        "base_s": scaled["base_s"] + decode_s,
        "prefill_base_s": scaled["prefill_base_s"] + device_s - decode_s,
        "prefill_floor_s": floor + prefill_s if floor else 0.0,
        "pipelined": served.pipelined if pipelined is None else pipelined,
        "launch_quantiles_s": tuple(q * scale + prefill_s for q in served.launch_quantiles_s),
        "decode_residual_s": tuple(r * scale for r in served.decode_residual_s),
    })  # fmt: skip


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name (`cpu-smollm2-135m`) or any profile JSON file by path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PROFILE_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ValueError(f"no profile {name_or_path!r}: shipped ones are {list_profiles()}")
    return Profile.from_dict(json.loads(path.read_text()))


def roofline_profile(
    gpu: str,
    model: str = DEFAULT_MODEL,
    block_size: int = 16,
    memory_utilization: float = 0.9,
    step_overhead_s: float = 1e-3,
) -> dict:
    """A roofline profile (a dict in the profile format) of a named card and model shape."""
    from pdserve.bench.floor import SHAPES, matmul_params  # torch-free

    if gpu not in CARDS:
        raise ValueError(f"unknown GPU {gpu!r}; known: {sorted(CARDS)} (or give --profile)")
    if model not in SHAPES:
        raise ValueError(f"unknown model shape {model!r}; known: {sorted(SHAPES)}")
    card, shape = CARDS[gpu], SHAPES[model]
    cost = StepCostModel.roofline(shape, card.flops, card.bandwidth_bps, step_overhead_s)
    weight_bytes = 2 * (
        matmul_params(shape)
        + (0 if shape.tie_word_embeddings else shape.vocab_size * shape.hidden_size)
    )
    kv_bytes = card.memory_gib * 2**30 * memory_utilization - weight_bytes
    num_blocks = int(kv_bytes // (shape.kv_bytes_per_token * block_size))
    return {
        "name": f"{gpu}-{model}-roofline", "kind": "roofline", "device": gpu, "model": model,
        "note": (f"ROOFLINE, not measured: {card.flops / 1e12:.0f} TFLOP/s, "
                 f"{card.bandwidth_bps / 1e9:.0f} GB/s, {step_overhead_s * 1e3:g} ms per step; "
                 "replace with `pdserve profile` on the card"),
        "block_size": block_size, "num_blocks": num_blocks,
        "kv_bytes_per_token": shape.kv_bytes_per_token,
        "max_num_batched_tokens": 8192, "max_num_seqs": 256,
        "cost": cost.to_dict(), "samples": [],
    }  # fmt: skip


def profile_for(gpu: str, model: str = DEFAULT_MODEL) -> Profile:
    """The shipped profile of (gpu, model) if there is one (measured first), else a roofline."""
    for kind in ("", "-roofline"):
        if (PROFILE_DIR / f"{gpu}-{model}{kind}.json").is_file():
            return load_profile(f"{gpu}-{model}{kind}")
    return Profile.from_dict(roofline_profile(gpu, model))
