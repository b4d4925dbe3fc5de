"""coredns_template_* counters: plain integers, turned into samples when Prometheus scrapes.

Names, help texts and labels are CoreDNS's (plugin/template/metrics.go); ``view`` is always
empty (linkdns has no *view* plugin). One collector per server (``env.collector``), so every block of a server counts into the same rows and the counts outlive
a handler.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from linkdns.plugin import Env

SHARED_KEY = "template.collector"

MATCH_LABELS = ["server", "zone", "view", "class", "type"]
FAILURE_LABELS = [*MATCH_LABELS, "section", "template"]


class TemplateCollector(Collector):
    def __init__(self) -> None:
        #: (server, zone, view, class, type) -> matched queries
        self.matches: Counter[tuple[str, ...]] = Counter()
        #: (server, zone, view, class, type, section, template) -> failed renderings
        self.failures: Counter[tuple[str, ...]] = Counter()
        #: same labels -> rendered text that is no record
        self.rr_failures: Counter[tuple[str, ...]] = Counter()

    def _families(self) -> tuple[CounterMetricFamily, ...]:
        return (
            CounterMetricFamily("coredns_template_matches", "Counter of template regex matches.",
                                labels=MATCH_LABELS),
            CounterMetricFamily("coredns_template_template_failures",
                                "Counter of go template failures.", labels=FAILURE_LABELS),
            CounterMetricFamily("coredns_template_rr_failures",
                                "Counter of mis-templated RRs.", labels=FAILURE_LABELS),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        fams = self._families()
        for fam, rows in zip(fams, (self.matches, self.failures, self.rr_failures), strict=True):
            for labels, n in list(rows.items()):
                fam.add_metric(list(labels), n)
        return iter(fams)


def collector(env: Env) -> TemplateCollector:
    """The registry's collector, registered on first use."""
    return env.collector(SHARED_KEY, TemplateCollector)
