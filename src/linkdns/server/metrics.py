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

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from linkdns.metrics import DROPPED, VIEW, ZONE, build_info, cumulative, rcode_label
from linkdns.server.stats import DROP_REASONS, PROTOS, ServerStats

if TYPE_CHECKING:
    from linkdns.server.listen import Listener
    from linkdns.server.site import Site


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

    def __init__(self, listeners: dict[tuple[str, int], Listener],
                 stats: Callable[[], ServerStats]) -> None:
        #: the server's listeners (its own dict: the current ones at each scrape)
        self.listeners = listeners
        self.stats = stats

    def describe(self) -> list[Metric]:
        """Names only (so the registry spots a second registration), no samples."""
        return _Families().all()

    def exported(self) -> tuple[set[tuple[str, str]], list[tuple[str, str, str]]]:
        """(server, zone) pairs whose block uses *prometheus*, and the plugin_enabled rows
        (server, zone, plugin name) for them, from the listeners' current routes."""
        zones: set[tuple[str, str]] = set()
        enabled: list[tuple[str, str, str]] = []
        for ln in list(self.listeners.values()):
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
        for ln in list(self.listeners.values()):
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
