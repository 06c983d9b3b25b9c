"""The controller's Prometheus metrics: routing, SLO admission, failures and the prefix index.

Registered into the server's registry (`pdserve up` serves them on the same /metrics), or into
a registry of their own for tests and benchmarks.

The metrics observed once or twice per request (routed, routing time, estimated and measured
TTFT, prefix tokens) are `LoopCounter` / `LoopHistogram`: plain numbers updated from the event
loop and turned into samples when scraped. prometheus_client's own take a lock per value and
walk the bucket bounds in Python, about 10 us per routed request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from pdserve import metrics as M

INSTANCE_LABEL = "instance"
ROUTE_BUCKETS_S = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2)


class LoopCounter:
    """A counter with at most one label, updated by one thread (no lock); a collector.
    `inc(amount, label)`; a label's series appears on its first `inc`."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None):  # fmt: skip
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self._values: dict[str, float] = {} if labelnames else {"": 0.0}
        if registry is not None:
            registry.register(self)

    def inc(self, amount: float = 1, label: str = "") -> None:
        self._values[label] = self._values.get(label, 0.0) + amount

    def value(self, label: str = "") -> float:
        return self._values.get(label, 0.0)

    def describe(self) -> list:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for label, value in list(self._values.items()):  # one C call: safe against a new label
            family.add_metric([label] if self.labelnames else [], value)
        return [family]


class LoopHistogram:
    """A histogram with at most one label, updated by one thread (no lock); a collector. Buckets
    as prometheus_client's: a value falls in the first bucket whose bound is >= it."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = (),
                 registry: CollectorRegistry | None = None):  # fmt: skip
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self._series: dict[str, list] = {}  # label -> [count per bucket (+Inf last)..., sum]
        if registry is not None:
            registry.register(self)

    def observe(self, value: float, label: str = "") -> None:
        series = self._series.get(label)
        if series is None:
            series = self._series[label] = [0] * (len(self.bounds) + 1) + [0.0]
        series[bisect_left(self.bounds, value)] += 1
        series[-1] += value

    def count(self, label: str = "") -> int:
        series = self._series.get(label)
        return sum(series[:-1]) if series is not None else 0

    def describe(self) -> list:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for label, series in list(self._series.items()):
            counts, total = series[:-1], series[-1]  # one copy: counts and sum of one moment
            buckets, cumulative = [], 0
            for le, n in zip(self._les, counts):
                cumulative += n
                buckets.append((le, cumulative))
            family.add_metric([label] if self.labelnames else [], buckets, total)
        return [family]


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry if registry is not None else CollectorRegistry()
        by_instance = [INSTANCE_LABEL]
        self.routed = LoopCounter(
            "pdserve:controller_routed_requests", "Requests routed.", by_instance, registry=r
        )
        self.est_ttft = LoopHistogram(
            "pdserve:controller_estimated_ttft_seconds",
            "TTFT the routing policy estimated for the chosen instance.",
            by_instance,
            buckets=M.TTFT_BUCKETS_S,
            registry=r,
        )
        self.ttft = LoopHistogram(
            "pdserve:controller_measured_ttft_seconds",
            "TTFT measured by the controller: dispatch to first event.",
            by_instance,
            buckets=M.TTFT_BUCKETS_S,
            registry=r,
        )
        self.prefix_hit_tokens = LoopCounter(
            "pdserve:controller_prefix_hit_tokens",
            "Prompt tokens the instances served from their caches.",
            by_instance,
            registry=r,
        )
        self.prefix_matched_tokens = LoopCounter(
            "pdserve:controller_prefix_matched_tokens",
            "Prompt tokens the global index expected cached.",
            registry=r,
        )
        self.route_s = LoopHistogram(
            "pdserve:controller_routing_decision_seconds",
            "Time to pick an instance (snapshots, index lookup, policy).",
            buckets=ROUTE_BUCKETS_S,
            registry=r,
        )
        self.rejected = Counter(
            "pdserve:controller_slo_rejected_requests",
            "Requests refused (429) because no instance could meet the SLO.",
            registry=r,
        )
        self.retries = Counter(
            "pdserve:controller_retried_requests",
            "Requests re-routed after their instance died before a token.",
            registry=r,
        )
        self.failed = Counter(
            "pdserve:controller_instance_failures",
            "Instances taken out of rotation (missed heartbeats, exit, restart).",
            registry=r,
        )
        self.replays = Counter(
            "pdserve:controller_kv_replays", "KV event replays or resyncs after a gap.", registry=r
        )
        self.live = Gauge("pdserve:controller_live_instances", "Instances in rotation.", registry=r)
        self.index_blocks = Gauge(
            "pdserve:controller_index_blocks",
            "Distinct block hashes in the global prefix index.",
            registry=r,
        )

    def observe_route(
        self, instance_id: str, seconds: float, est_ttft_s: float, num_matched_tokens: int
    ) -> None:
        self.route_s.observe(seconds)
        self.routed.inc(1, instance_id)
        if est_ttft_s == est_ttft_s:  # not nan
            self.est_ttft.observe(est_ttft_s, instance_id)
        if num_matched_tokens:
            self.prefix_matched_tokens.inc(num_matched_tokens)

    def observe_first_event(self, instance_id: str, ttft_s: float, num_cached: int) -> None:
        self.ttft.observe(ttft_s, instance_id)
        if num_cached:
            self.prefix_hit_tokens.inc(num_cached, instance_id)
