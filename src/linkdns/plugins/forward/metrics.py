"""forward's Prometheus metrics, with CoreDNS's names and labels (plugin/pkg/proxy/metrics.go
and plugin/forward/metrics.go), built once per registry (through ``env.keep``).

What is counted per query (connection cache hits/misses, request durations) is kept in plain
integers and bucket arrays (:class:`UpstreamStats`, one per upstream address, shared by every
forward that names it) and turned into metric families by a custom collector when Prometheus
scrapes; no prometheus-client call runs per query. The rare events (health check failures,
all upstreams down, max_concurrent rejects) use prometheus-client counters directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from linkdns import wire
from linkdns.metrics import Hist, cumulative

if TYPE_CHECKING:
    from linkdns.plugin import Env

# plugin.TimeBuckets: prometheus.ExponentialBuckets(0.00025, 2, 16)
TIME_BUCKETS = tuple(0.00025 * 2**i for i in range(16))

PROXY_NAME = "forward"
_KEY = "forward.metrics"


class UpstreamStats:
    """Per-query counters of one upstream address (the ``to`` label)."""

    __slots__ = ("conn", "durations", "malformed", "scrubbed")

    def __init__(self) -> None:
        #: replies with one of our IDs that were not a readable response (attempt failed)
        self.malformed = 0
        #: accepted replies that had records removed by the scrubber
        self.scrubbed = 0
        #: connection cache hits and misses per protocol: proto -> [hits, misses]
        self.conn: dict[str, list[int]] = {}
        #: request duration per reply rcode
        self.durations: dict[int, Hist] = {}

    def conn_for(self, proto: str) -> list[int]:
        """The [hits, misses] counters of ``proto`` (kept by reference on the query path)."""
        c = self.conn.get(proto)
        if c is None:
            c = self.conn[proto] = [0, 0]
        return c

    def count_conn(self, hit: bool, proto: str) -> None:
        self.conn_for(proto)[0 if hit else 1] += 1

    def observe(self, rcode: int, seconds: float) -> None:
        h = self.durations.get(rcode)
        if h is None:
            h = self.durations[rcode] = Hist(TIME_BUCKETS)
        h.observe(seconds)


class ForwardMetrics:
    """The metric families; upstreams share one :class:`UpstreamStats` per address."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.upstreams: dict[str, UpstreamStats] = {}
        self.healthcheck_failures = Counter(
            "coredns_proxy_healthcheck_failures_total",
            "Counter of the number of failed healthchecks.", ["proxy_name", "to"],
            registry=registry)
        self.healthcheck_broken = Counter(
            "coredns_forward_healthcheck_broken_total",
            "Counter of the number of complete failures of the healthchecks.",
            registry=registry)
        self.max_concurrent_rejects = Counter(
            "coredns_forward_max_concurrent_rejects_total",
            "Counter of the number of queries rejected because the concurrent queries were "
            "at maximum.", registry=registry)
        if registry is not None:
            registry.register(ForwardCollector(self))

    def stats_for(self, addr: str) -> UpstreamStats:
        s = self.upstreams.get(addr)
        if s is None:
            s = self.upstreams[addr] = UpstreamStats()
        return s


class ForwardCollector(Collector):
    """Reads the per-upstream counters at scrape time."""

    def __init__(self, metrics: ForwardMetrics) -> None:
        self.metrics = metrics

    def _families(self) -> tuple[HistogramMetricFamily, CounterMetricFamily,
                                 CounterMetricFamily, CounterMetricFamily,
                                 CounterMetricFamily]:
        return (
            HistogramMetricFamily(
                "coredns_proxy_request_duration_seconds",
                "Histogram of the time each request took.",
                labels=["proxy_name", "to", "rcode"]),
            CounterMetricFamily(
                "coredns_proxy_conn_cache_hits_total",
                "Counter of connection cache hits per upstream and protocol.",
                labels=["proxy_name", "to", "proto"]),
            CounterMetricFamily(
                "coredns_proxy_conn_cache_misses_total",
                "Counter of connection cache misses per upstream and protocol.",
                labels=["proxy_name", "to", "proto"]),
            CounterMetricFamily(  # linkdns: CoreDNS has no such counter
                "linkdns_forward_malformed_replies",
                "Counter of upstream replies (right ID, right address) that could not be read; "
                "each failed its attempt.",
                labels=["to"]),
            CounterMetricFamily(  # linkdns
                "linkdns_forward_scrubbed_replies",
                "Counter of upstream replies that had records removed before they were "
                "cached or answered (records off the question, out of the zone).",
                labels=["to"]),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        dur, hits, misses, malformed, scrubbed = self._families()
        for addr, st in sorted(self.metrics.upstreams.items()):
            for rc, h in sorted(list(st.durations.items())):
                name = wire.RCODE_NAMES.get(rc, str(rc))
                dur.add_metric([PROXY_NAME, addr, name], cumulative(h), h.sum)
            for proto, (h_n, m_n) in sorted(list(st.conn.items())):
                if h_n:
                    hits.add_metric([PROXY_NAME, addr, proto], h_n)
                if m_n:
                    misses.add_metric([PROXY_NAME, addr, proto], m_n)
            if st.malformed:
                malformed.add_metric([addr], st.malformed)
            if st.scrubbed:
                scrubbed.add_metric([addr], st.scrubbed)
        return iter((dur, hits, misses, malformed, scrubbed))


def metrics_for(env: Env) -> ForwardMetrics:
    """The one ForwardMetrics of this registry (several blocks/forward lines share it)."""
    registry = env.registry
    return env.keep(_KEY, lambda: ForwardMetrics(registry))
