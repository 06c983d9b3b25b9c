"""Request timelines -> TTFT, TPOT, ITL, E2E, throughput, goodput at SLO, cost per token.

One definition shared by the benchmark client, the server's Prometheus metrics and the simulator.
Pure Python: no torch, no third-party imports, no clock (times come in as seconds on any one clock).

Definitions (all per successful request; failed requests count only against SLO attainment):

    send_s ──── first_token_s ── t1 ── t2 ── ... ── end_s
    |<-- TTFT -->|<-ITL->|<-ITL->|
    |<------------------ E2E ------------------------>|

    TPOT = (E2E - TTFT) / (num_output_tokens - 1)   undefined (excluded) for 1-token outputs
    ITL  = gaps between successive token arrivals (one per streamed chunk after the first)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

# Prometheus names and buckets: pdserve/server/prom.py builds its collectors from these, so the
# server, the benchmark and the simulator speak of the same quantities.
TTFT_SECONDS = "pdserve:time_to_first_token_seconds"
ITL_SECONDS = "pdserve:inter_token_latency_seconds"
E2E_SECONDS = "pdserve:e2e_request_latency_seconds"
QUEUE_TIME_SECONDS = "pdserve:request_queue_time_seconds"
NUM_REQUESTS_RUNNING = "pdserve:num_requests_running"  # gauge
NUM_REQUESTS_WAITING = "pdserve:num_requests_waiting"  # gauge
KV_CACHE_USAGE_PERC = "pdserve:kv_cache_usage_perc"  # gauge, 0..1
PROMPT_TOKENS_TOTAL = "pdserve:prompt_tokens_total"  # counter
GENERATION_TOKENS_TOTAL = "pdserve:generation_tokens_total"  # counter
PREFIX_CACHE_QUERIES_TOTAL = "pdserve:prefix_cache_queries_total"  # counter, tokens looked up
PREFIX_CACHE_HITS_TOTAL = "pdserve:prefix_cache_hits_total"  # counter, tokens found cached
NUM_PREEMPTIONS_TOTAL = "pdserve:num_preemptions_total"  # counter
REQUEST_SUCCESS_TOTAL = "pdserve:request_success_total"  # counter, label FINISHED_REASON_LABEL
FINISHED_REASON_LABEL = "finished_reason"

TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                  2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
                 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)  # fmt: skip
E2E_BUCKETS_S = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                 60.0, 120.0, 240.0, 480.0)  # fmt: skip
QUEUE_TIME_BUCKETS_S = E2E_BUCKETS_S

# SLO keys accepted by goodput (values in seconds); "tpot" is met by 1-token outputs.
SLO_METRICS = ("ttft", "tpot", "e2el")
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass(slots=True, init=False)
class RequestTimeline:
    """What one request did, in seconds on one clock. Filled in while the request streams."""

    send_s: float  # the request left the client (or entered the instance)
    prompt_len: int = 0
    token_times_s: list[float] = field(default_factory=list)  # arrival of each streamed chunk
    num_output_tokens: int = 0  # from usage when reported, else the number of chunks
    end_s: float | None = None  # response complete
    is_success: bool = False
    error: str = ""
    scheduled_s: float | None = None  # when the workload wanted it sent (queueing in the client)

    # Written out: the simulator's mypyc build (benchmarks/build_sim_fast.py) compiles it (one
    # timeline per request; the generated one runs as interpreted code). None: a fresh list.
    def __init__(
        self,
        send_s: float,
        prompt_len: int = 0,
        token_times_s: list[float] | None = None,
        num_output_tokens: int = 0,
        end_s: float | None = None,
        is_success: bool = False,
        error: str = "",
        scheduled_s: float | None = None,
    ) -> None:
        self.send_s = send_s
        self.prompt_len = prompt_len
        self.token_times_s = [] if token_times_s is None else token_times_s
        self.num_output_tokens = num_output_tokens
        self.end_s = end_s
        self.is_success = is_success
        self.error = error
        self.scheduled_s = scheduled_s

    @property
    def first_token_s(self) -> float | None:
        return self.token_times_s[0] if self.token_times_s else None


def ttft_s(tl: RequestTimeline) -> float | None:
    first = tl.first_token_s
    return None if first is None else first - tl.send_s


def e2e_s(tl: RequestTimeline) -> float | None:
    if tl.end_s is not None:
        return tl.end_s - tl.send_s
    return tl.token_times_s[-1] - tl.send_s if tl.token_times_s else None


def tpot_s(tl: RequestTimeline) -> float | None:
    """(E2E - TTFT) / (output tokens - 1); None when it is undefined (fewer than 2 tokens)."""
    ttft, e2e = ttft_s(tl), e2e_s(tl)
    if ttft is None or e2e is None or tl.num_output_tokens < 2:
        return None
    return (e2e - ttft) / (tl.num_output_tokens - 1)


def itls_s(tl: RequestTimeline) -> list[float]:
    t = tl.token_times_s
    return [b - a for a, b in zip(t, t[1:])]


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) with linear interpolation between ranks, as numpy's default."""
    if not values:
        return math.nan
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {p}")
    xs = sorted(values)
    rank = p / 100 * (len(xs) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def meets_slos(tl: RequestTimeline, slos_s: Mapping[str, float]) -> bool:
    """True if the request succeeded and met EVERY given SLO (seconds, keys from SLO_METRICS)."""
    if not tl.is_success:
        return False
    for name, limit in slos_s.items():
        if name not in SLO_METRICS:
            raise ValueError(f"unknown SLO metric {name!r}; expected one of {SLO_METRICS}")
        value = {"ttft": ttft_s, "tpot": tpot_s, "e2el": e2e_s}[name](tl)
        if value is None and name == "tpot":
            continue  # a 1-token output has no time per output token to miss
        if value is None or value > limit:
            return False
    return True


def cost_per_million_tokens(
    num_tokens: int, duration_s: float, gpu_cost_per_hour: float, num_gpus: int = 1
) -> float | None:
    """Dollars per 1e6 tokens: gpu_cost_per_hour * num_gpus * duration over the tokens made."""
    if num_tokens <= 0 or gpu_cost_per_hour <= 0:
        return None
    return gpu_cost_per_hour * num_gpus * duration_s / 3600 / num_tokens * 1e6


@dataclass(frozen=True, slots=True)
class MetricStats:
    """Distribution of one latency metric, in milliseconds."""

    mean_ms: float
    median_ms: float
    std_ms: float
    percentiles_ms: tuple[tuple[float, float], ...]  # (p, value)
    count: int


def metric_stats(values_s: Sequence[float], percentiles: Iterable[float]) -> MetricStats:
    ms = [v * 1000 for v in values_s]
    if not ms:
        return MetricStats(
            math.nan, math.nan, math.nan, tuple((p, math.nan) for p in percentiles), 0
        )
    mean = sum(ms) / len(ms)
    std = math.sqrt(sum((v - mean) ** 2 for v in ms) / len(ms))  # population std, as numpy
    pct = tuple((float(p), percentile(ms, p)) for p in percentiles)
    return MetricStats(mean, percentile(ms, 50), std, pct, len(ms))


def latency_values(timelines: Iterable[RequestTimeline], metric: str) -> list[float]:
    """All values of one metric (seconds) over the successful requests; ITL is flattened."""
    ok = [tl for tl in timelines if tl.is_success]
    if metric == "itl":
        return [gap for tl in ok for gap in itls_s(tl)]
    fn = {"ttft": ttft_s, "tpot": tpot_s, "e2el": e2e_s}.get(metric)
    if fn is None:
        raise ValueError(f"unknown metric {metric!r}; expected one of {LATENCY_METRICS}")
    return [v for v in map(fn, ok) if v is not None]


def _pkey(p: float) -> str:
    return f"p{p:g}".replace(".", "_")


@dataclass(frozen=True, slots=True)
class BenchSummary:
    """One run reduced to numbers; `to_dict()` has vLLM-style keys (mean_ttft_ms, p99_itl_ms)."""

    num_requests: int
    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # completed requests / s
    output_throughput: float  # output tokens / s
    total_token_throughput: float  # (prompt + output) tokens / s
    goodput: float | None  # requests meeting every SLO / s; None without SLOs
    slo_attainment: float | None  # fraction of ALL requests (failures included) meeting every SLO
    slos_ms: tuple[tuple[str, float], ...]
    metrics: tuple[tuple[str, MetricStats], ...]
    cost_per_million_output_tokens: float | None = None
    errors: tuple[tuple[str, int], ...] = ()  # error message -> count

    def stats(self, metric: str) -> MetricStats:
        return dict(self.metrics)[metric]

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("metrics", "slos_ms", "errors")}
        out["slos_ms"] = dict(self.slos_ms)
        out["errors"] = dict(self.errors)
        for name, st in self.metrics:
            out[f"mean_{name}_ms"] = st.mean_ms
            out[f"median_{name}_ms"] = st.median_ms
            out[f"std_{name}_ms"] = st.std_ms
            for p, value in st.percentiles_ms:
                out[f"{_pkey(p)}_{name}_ms"] = value
        return out


def summarize(
    timelines: Sequence[RequestTimeline],
    duration_s: float,
    slos_s: Mapping[str, float] | None = None,
    percentiles: Sequence[float] = (50, 90, 99),
    metrics: Sequence[str] = LATENCY_METRICS,
    gpu_cost_per_hour: float = 0.0,
    num_gpus: int = 1,
) -> BenchSummary:
    """Reduce a run's timelines over `duration_s` (first send to last finish) to a BenchSummary."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    ok = [tl for tl in timelines if tl.is_success]
    num_in = sum(tl.prompt_len for tl in ok)
    num_out = sum(tl.num_output_tokens for tl in ok)
    goodput = attainment = None
    if slos_s:
        num_good = sum(meets_slos(tl, slos_s) for tl in timelines)
        goodput = num_good / duration_s
        attainment = num_good / len(timelines) if timelines else 0.0
    errors: dict[str, int] = {}
    for tl in timelines:
        if not tl.is_success:
            errors[tl.error or "unknown"] = errors.get(tl.error or "unknown", 0) + 1
    return BenchSummary(
        num_requests=len(timelines),
        completed=len(ok),
        failed=len(timelines) - len(ok),
        duration_s=duration_s,
        total_input_tokens=num_in,
        total_output_tokens=num_out,
        request_throughput=len(ok) / duration_s,
        output_throughput=num_out / duration_s,
        total_token_throughput=(num_in + num_out) / duration_s,
        goodput=goodput,
        slo_attainment=attainment,
        slos_ms=tuple((k, v * 1000) for k, v in (slos_s or {}).items()),
        metrics=tuple((m, metric_stats(latency_values(ok, m), percentiles)) for m in metrics),
        cost_per_million_output_tokens=cost_per_million_tokens(
            num_out, duration_s, gpu_cost_per_hour, num_gpus
        ),
        errors=tuple(sorted(errors.items())),
    )
