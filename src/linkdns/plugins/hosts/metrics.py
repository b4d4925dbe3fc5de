"""coredns_hosts_* gauges, read from the live hosts handlers when Prometheus scrapes.

Names and help texts are CoreDNS's (plugin/hosts/metrics.go); neither has labels. One
collector per server registry (``env.collector``); handlers attach when they start and
detach when they stop, so a reload or shutdown leaves no stale value behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from linkdns.plugin import Env

SHARED_KEY = "hosts.collector"


class Source(Protocol):
    def entries(self) -> int:
        """File plus inline entries, reverse names included."""

    def reloaded(self) -> float:
        """Modification time (Unix seconds) of the file last read, 0 if never read."""


class HostsCollector(Collector):
    def __init__(self) -> None:
        self.sources: list[Source] = []

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("coredns_hosts_entries",
                              "The combined number of entries in hosts and Corefile.",
                              labels=[]),
            GaugeMetricFamily("coredns_hosts_reload_timestamp_seconds",
                              "The timestamp of the last reload of hosts file."),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        entries, stamp = self._families()
        live = list(self.sources)
        if live:
            entries.add_metric([], sum(s.entries() for s in live))
        stamp.add_metric([], max((s.reloaded() for s in live), default=0.0))
        return iter((entries, stamp))


def attach(env: Env, src: Source) -> None:
    coll = env.collector(SHARED_KEY, HostsCollector)
    if src not in coll.sources:
        coll.sources.append(src)


def detach(env: Env, src: Source) -> None:
    coll = env.find(SHARED_KEY)
    if isinstance(coll, HostsCollector) and src in coll.sources:
        coll.sources.remove(src)
