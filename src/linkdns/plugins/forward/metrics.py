"""forward's Prometheus metrics, with CoreDNS's names and labels (plugin/pkg/proxy/metrics.go
and plugin/forward/metrics.go), built once per registry (through ``site.shared``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

# plugin.TimeBuckets: prometheus.ExponentialBuckets(0.00025, 2, 16)
TIME_BUCKETS = tuple(0.00025 * 2**i for i in range(16))

_KEY = "forward.metrics"


class ForwardMetrics:
    """The metric families; upstreams bind their label children once (see Upstream)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.request_duration = Histogram(
            "coredns_proxy_request_duration_seconds", "Histogram of the time each request took.",
            ["proxy_name", "to", "rcode"], buckets=TIME_BUCKETS, registry=registry)
        self.healthcheck_failures = Counter(
            "coredns_proxy_healthcheck_failures_total",
            "Counter of the number of failed healthchecks.", ["proxy_name", "to"],
            registry=registry)
        self.conn_cache_hits = Counter(
            "coredns_proxy_conn_cache_hits_total",
            "Counter of connection cache hits per upstream and protocol.",
            ["proxy_name", "to", "proto"], registry=registry)
        self.conn_cache_misses = Counter(
            "coredns_proxy_conn_cache_misses_total",
            "Counter of connection cache misses per upstream and protocol.",
            ["proxy_name", "to", "proto"], registry=registry)
        self.healthcheck_broken = Counter(
            "coredns_forward_healthcheck_broken_total",
            "Counter of the number of complete failures of the healthchecks.",
            registry=registry)
        self.max_concurrent_rejects = Counter(
            "coredns_forward_max_concurrent_rejects_total",
            "Counter of the number of queries rejected because the concurrent queries were "
            "at maximum.", registry=registry)


def metrics_for(shared: dict[str, Any], registry: CollectorRegistry | None) -> ForwardMetrics:
    """The one ForwardMetrics of this registry (several blocks/forward lines share it)."""
    m = shared.get(_KEY)
    if not isinstance(m, ForwardMetrics):
        m = ForwardMetrics(registry)
        shared[_KEY] = m
    return m
