"""The server's Prometheus registry, built from the names and buckets in pdserve/metrics.py.

Latencies, token counts and finished requests are observed here, per engine request, as the
server streams them. Load gauges, prefix-cache and preemption counters and the queue-time
histogram come from the engine's own counters (WorkerStatus), read at scrape time.
"""

from __future__ import annotations

import itertools

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from pdserve import metrics as M
from pdserve.engine.output import RequestOutput
from pdserve.engine.protocol import WorkerStatus


def _counter_name(name: str) -> str:
    return name.removesuffix("_total")  # prometheus_client appends _total itself


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(M.TTFT_SECONDS, "Time to first token.", buckets=M.TTFT_BUCKETS_S,
                              registry=r)  # fmt: skip
        self.itl = Histogram(M.ITL_SECONDS, "Time between tokens.", buckets=M.ITL_BUCKETS_S,
                             registry=r)  # fmt: skip
        self.e2e = Histogram(M.E2E_SECONDS, "Request latency, arrival to last token.",
                             buckets=M.E2E_BUCKETS_S, registry=r)  # fmt: skip
        self.prompt_tokens = Counter(_counter_name(M.PROMPT_TOKENS_TOTAL),
                                     "Prompt tokens of finished requests.", registry=r)  # fmt: skip
        self.generation_tokens = Counter(_counter_name(M.GENERATION_TOKENS_TOTAL),
                                         "Generated tokens.", registry=r)  # fmt: skip
        self.success = Counter(_counter_name(M.REQUEST_SUCCESS_TOTAL),
                               "Finished requests by finish reason.",
                               [M.FINISHED_REASON_LABEL], registry=r)  # fmt: skip
        self.engine_status: WorkerStatus | None = None
        r.register(_EngineCollector(self))

    def observe_finished(self, output: RequestOutput) -> None:
        """One engine request (one choice) ended: record its timeline and counts."""
        times = output.token_times_s
        if output.first_token_s is not None:
            self.ttft.observe(output.first_token_s - output.arrival_s)
        for a, b in itertools.pairwise(times):
            self.itl.observe(b - a)
        if output.finished_s is not None:
            self.e2e.observe(output.finished_s - output.arrival_s)
        self.prompt_tokens.inc(len(output.prompt_token_ids))
        self.generation_tokens.inc(len(output.token_ids))
        if output.finish_reason is not None:
            self.success.labels(output.finish_reason.value).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """Exports the engine's counters and gauges as of the last WorkerStatus."""

    def __init__(self, owner: ServerMetrics):
        self.owner = owner

    def describe(self):
        return []

    def collect(self):
        status = self.owner.engine_status
        if status is None:
            return
        snap, stats = status.snapshot, status.stats
        yield GaugeMetricFamily(M.NUM_REQUESTS_RUNNING, "Requests running.", snap.num_running)
        yield GaugeMetricFamily(M.NUM_REQUESTS_WAITING, "Requests waiting.", snap.num_waiting)
        yield GaugeMetricFamily(M.KV_CACHE_USAGE_PERC, "KV cache usage, 0..1.", snap.kv_usage)
        for name, doc, value in (
            (M.PREFIX_CACHE_QUERIES_TOTAL, "Prompt tokens looked up.", stats.prefix_queries),
            (M.PREFIX_CACHE_HITS_TOTAL, "Prompt tokens found cached.", stats.prefix_hits),
            (M.NUM_PREEMPTIONS_TOTAL, "Preemptions.", stats.num_preemptions),
        ):
            yield CounterMetricFamily(_counter_name(name), doc, value=value)
        counts = stats.queue_time_counts
        if counts:
            bounds = [*map(str, M.QUEUE_TIME_BUCKETS_S), "+Inf"]
            cumulative = list(itertools.accumulate(counts))
            yield HistogramMetricFamily(
                M.QUEUE_TIME_SECONDS, "Time from arrival to first schedule.",
                buckets=list(zip(bounds, cumulative)), sum_value=stats.queue_time_sum_s,
            )  # fmt: skip
