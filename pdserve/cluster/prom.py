"""The controller's Prometheus metrics: routing, SLO admission, failures and the prefix index.

Registered into the server's registry (`pdserve up` serves them on the same /metrics), or into
a registry of their own for tests and benchmarks.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pdserve import metrics as M

INSTANCE_LABEL = "instance"
ROUTE_BUCKETS_S = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2)


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry if registry is not None else CollectorRegistry()
        by_instance = [INSTANCE_LABEL]
        self.routed = Counter(
            "pdserve:controller_routed_requests", "Requests routed.", by_instance, registry=r
        )
        self.est_ttft = Histogram(
            "pdserve:controller_estimated_ttft_seconds",
            "TTFT the routing policy estimated for the chosen instance.",
            by_instance,
            buckets=M.TTFT_BUCKETS_S,
            registry=r,
        )
        self.ttft = Histogram(
            "pdserve:controller_measured_ttft_seconds",
            "TTFT measured by the controller: dispatch to first event.",
            by_instance,
            buckets=M.TTFT_BUCKETS_S,
            registry=r,
        )
        self.prefix_hit_tokens = Counter(
            "pdserve:controller_prefix_hit_tokens",
            "Prompt tokens the instances served from their caches.",
            by_instance,
            registry=r,
        )
        self.prefix_matched_tokens = Counter(
            "pdserve:controller_prefix_matched_tokens",
            "Prompt tokens the global index expected cached.",
            registry=r,
        )
        self.route_s = Histogram(
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
        # (metric, instance_id) -> labelled child: `labels()` takes a lock and builds its key on
        # every call; a child is still created on first use only (no empty series)
        self._children: dict[tuple[object, str], object] = {}

    def _child(self, metric, instance_id: str):
        child = self._children.get((metric, instance_id))
        if child is None:
            child = self._children[metric, instance_id] = metric.labels(instance_id)
        return child

    def observe_route(
        self, instance_id: str, seconds: float, est_ttft_s: float, num_matched_tokens: int
    ) -> None:
        self.route_s.observe(seconds)
        self._child(self.routed, instance_id).inc()
        if est_ttft_s == est_ttft_s:  # not nan
            self._child(self.est_ttft, instance_id).observe(est_ttft_s)
        if num_matched_tokens:
            self.prefix_matched_tokens.inc(num_matched_tokens)

    def observe_first_event(self, instance_id: str, ttft_s: float, num_cached: int) -> None:
        self._child(self.ttft, instance_id).observe(ttft_s)
        if num_cached:
            self._child(self.prefix_hit_tokens, instance_id).inc(num_cached)
