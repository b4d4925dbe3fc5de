"""Server metrics with CoreDNS's names and labels, read from plain counters at scrape time.

The server counts in plain integers and bucket arrays (server/stats.py); nothing here runs per
query. :class:`ServerCollector` is a prometheus-client custom collector that turns a
:class:`~linkdns.server.stats.ServerStats` into metric families when ``/metrics`` is scraped.
It reads the stats through a callable so that a multi-process server can later hand it a
merged copy.

Only zones of server blocks that use the *prometheus* directive are exported (as CoreDNS,
where the directive is what counts a block's queries), plus the ``dropped`` pseudo-zone:
queries refused or dropped before reaching any block. ``view`` is always ``""`` (linkdns has
no *view* plugin).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING

from prometheus_client import ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from linkdns import __version__, wire
from linkdns.server.stats import DROP_REASONS, PROTOS, Hist, ServerStats

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from linkdns.server.core import Server
    from linkdns.server.site import Site

DROPPED = "dropped"
VIEW = ""

# CoreDNS plugin.SlimTimeBuckets: prometheus.ExponentialBuckets(0.00025, 10, 5)
SLIM_TIME_BUCKETS: tuple[float, ...] = tuple(0.00025 * 10**i for i in range(5))

ZONE = ["server", "zone", "view"]


def go_float(v: float) -> str:
    """A number as Go's ``strconv.FormatFloat(v, 'g', -1, 64)`` writes it (``0``, ``16000``,
    ``0.00025``, ``1e+06``): what CoreDNS's ``le`` labels look like."""
    v = float(v)
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "0"
    # Python's repr and Go both pick the shortest digits that round-trip.
    _, digs, exp = Decimal(repr(abs(v))).normalize().as_tuple()
    d = "".join(map(str, digs))
    e10 = len(d) + int(exp) - 1
    neg = "-" if v < 0 else ""
    if e10 < -4 or e10 >= 6:
        mant = d[0] + ("." + d[1:] if len(d) > 1 else "")
        return f"{neg}{mant}e{'-' if e10 < 0 else '+'}{abs(e10):02d}"
    r = repr(abs(v))
    return neg + (r[:-2] if r.endswith(".0") else r)


def rcode_label(rc: int) -> str:
    return wire.RCODE_NAMES.get(rc, str(rc))


def cumulative(h: Hist) -> list[tuple[str, float]]:
    """Prometheus buckets (cumulative, ending with +Inf) from per-bucket counts."""
    out: list[tuple[str, float]] = []
    acc = 0
    counts = list(h.counts)
    for bound, c in zip(h.bounds, counts, strict=False):
        acc += c
        out.append((go_float(bound), acc))
    out.append(("+Inf", acc + counts[-1]))
    return out


def build_info() -> tuple[str, str, str]:
    """(version, revision, goversion) label values; the last holds the Python version."""
    return __version__, "", f"python{platform.python_version()}"


class _Families:
    """One scrape's metric families (fresh each time: a collector must not keep samples)."""

    def __init__(self) -> None:
        self.requests = CounterMetricFamily(
            "coredns_dns_requests_total",
            "Counter of DNS requests made per zone, protocol and family.",
            labels=[*ZONE, "proto", "family", "type"])
        self.responses = CounterMetricFamily(
            "coredns_dns_responses_total", "Counter of response status codes.",
            labels=[*ZONE, "rcode", "plugin"])
        self.duration = HistogramMetricFamily(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took per zone.", labels=ZONE)
        self.req_size = HistogramMetricFamily(
            "coredns_dns_request_size_bytes",
            "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol.",
            labels=[*ZONE, "proto"])
        self.resp_size = HistogramMetricFamily(
            "coredns_dns_response_size_bytes", "Size of the returned response in bytes.",
            labels=[*ZONE, "proto"])
        self.do = CounterMetricFamily(
            "coredns_dns_do_requests_total", "Counter of DNS requests with DO bit set per zone.",
            labels=ZONE)
        self.panics = CounterMetricFamily(
            "coredns_panics_total", "A metrics that counts the number of panics.")
        self.enabled = GaugeMetricFamily(
            "coredns_plugin_enabled",
            "A metric that indicates whether a plugin is enabled on per server and zone basis.",
            labels=[*ZONE, "name"])
        self.build = GaugeMetricFamily(
            "coredns_build_info",
            "A metric with a constant '1' value labeled by version, revision, and goversion "
            "from which CoreDNS was built.", labels=["version", "revision", "goversion"])
        # linkdns additions (no CoreDNS equivalent)
        self.inflight = GaugeMetricFamily(
            "linkdns_queries_in_flight",
            "Queries on the slow path (the plugin chain) being worked on, per server.",
            labels=["server"])
        self.drops = CounterMetricFamily(
            "linkdns_dropped_queries_total",
            "Queries received and not answered, per server and reason.",
            labels=["server", "reason"])

    def all(self) -> list[Metric]:
        return [self.requests, self.responses, self.duration, self.req_size, self.resp_size,
                self.do, self.panics, self.enabled, self.build, self.inflight, self.drops]


class ServerCollector:
    """``coredns_dns_*``, ``coredns_plugin_enabled``, ``coredns_build_info``,
    ``coredns_panics_total``, ``linkdns_queries_in_flight`` and
    ``linkdns_dropped_queries_total`` for one Server."""

    def __init__(self, server: Server, stats: Callable[[], ServerStats] | None = None) -> None:
        self.server = server
        self.stats = stats if stats is not None else (lambda: server.stats)

    def describe(self) -> list[Metric]:
        """Names only (so the registry spots a second registration), no samples."""
        return _Families().all()

    def exported(self) -> tuple[set[tuple[str, str]], list[tuple[str, str, str]]]:
        """(server, zone) pairs whose block uses *prometheus*, and the plugin_enabled rows
        (server, zone, plugin name) for them, from the listeners' current routes."""
        zones: set[tuple[str, str]] = set()
        enabled: list[tuple[str, str, str]] = []
        for ln in list(self.server.listeners.values()):
            for route in list(ln.routes.values()):
                site = route.site
                key = (ln.name, route.zone)
                if "prometheus" not in site.cfg.plugins or key in zones:
                    continue
                zones.add(key)
                enabled.extend((ln.name, route.zone, name) for name in plugin_names(site))
        return zones, enabled

    def collect(self) -> Iterator[Metric]:
        f = _Families()
        stats = self.stats()
        zones, enabled = self.exported()
        for (server, zone), zs in sorted(list(stats.zones.items())):
            if zone != DROPPED and (server, zone) not in zones:
                continue
            lz = [server, zone, VIEW]
            zs.fold()  # the hit path's ledger into the counters
            for proto, family, typ, n in sorted(zs.request_rows()):
                f.requests.add_metric([*lz, proto, family, typ], n)
            for (rc, plugin), n in sorted(list(zs.responses.items())):
                f.responses.add_metric([*lz, rcode_label(rc), plugin], n)
            if zs.do_requests:
                f.do.add_metric(lz, zs.do_requests)
            if zs.duration.count:
                f.duration.add_metric(lz, cumulative(zs.duration), zs.duration.sum)
            for i, proto in enumerate(PROTOS):
                if zs.req_size[i].count:
                    f.req_size.add_metric([*lz, proto], cumulative(zs.req_size[i]),
                                          zs.req_size[i].sum)
                if zs.resp_size[i].count:
                    f.resp_size.add_metric([*lz, proto], cumulative(zs.resp_size[i]),
                                           zs.resp_size[i].sum)
        f.panics.add_metric([], stats.panics)
        for server, zone, name in sorted(enabled):
            f.enabled.add_metric([server, zone, VIEW, name], 1)
        f.build.add_metric(list(build_info()), 1)
        drops = dict(stats.drops)
        for ln in list(self.server.listeners.values()):
            f.inflight.add_metric([ln.name], ln.inflight)
            for reason in DROP_REASONS:
                drops.setdefault((ln.name, reason), 0)
        for (server, reason), n in sorted(drops.items()):
            f.drops.add_metric([server, reason], n)
        return iter(f.all())


# Plugins that in CoreDNS only hook start-up (no handler in the chain): not "enabled" there.
SETUP_ONLY = frozenset({"reload", "bind", "ready", "health"})


def plugin_names(site: Site) -> list[str]:
    """Names CoreDNS lists in coredns_plugin_enabled for a block: its chain plugins, which in
    CoreDNS include prometheus itself."""
    names = {h.name for h in site.handlers if h.name}
    names.update(n for n in site.plugin_names if n == "prometheus")
    return sorted(names)


class HealthStats:
    """The health plugin's self-check: a duration histogram and a failure count."""

    __slots__ = ("duration", "failures")

    def __init__(self) -> None:
        self.duration = Hist(SLIM_TIME_BUCKETS)
        self.failures = 0


class HealthCollector:
    """``coredns_health_request_duration_seconds`` and ``coredns_health_request_failures_total``
    (process-wide: no server label, as in CoreDNS)."""

    def __init__(self, stats: HealthStats) -> None:
        self.stats = stats

    def _families(self) -> tuple[HistogramMetricFamily, CounterMetricFamily]:
        return (
            HistogramMetricFamily("coredns_health_request_duration_seconds",
                                  "Histogram of the time (in seconds) each request took."),
            CounterMetricFamily("coredns_health_request_failures_total",
                                "The number of times the health check failed."),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        dur, fail = self._families()
        h = self.stats.duration
        dur.add_metric([], cumulative(h), h.sum)
        fail.add_metric([], self.stats.failures)
        yield dur
        yield fail


def register_server(site: Site) -> ServerCollector:
    """The server collector of this site's registry, registered on first call only."""
    col: ServerCollector | None = site.shared.get("metrics.server")
    if col is None:
        col = site.shared["metrics.server"] = ServerCollector(site.server)
        registry: CollectorRegistry = site.registry
        registry.register(col)
        # process_* (CPU, memory, fds, start time) as Go's client exports for CoreDNS
        ProcessCollector(registry=registry)
    return col


def register_health(site: Site) -> HealthStats:
    """The process-wide health self-check counters, registered on first call only."""
    st: HealthStats | None = site.shared.get("metrics.health")
    if st is None:
        st = site.shared["metrics.health"] = HealthStats()
        registry: CollectorRegistry = site.registry
        registry.register(HealthCollector(st))
    return st
