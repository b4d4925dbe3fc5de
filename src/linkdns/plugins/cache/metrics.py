"""coredns_cache_* metrics: one custom collector per registry reads the caches' integers.

The caches count in plain ints on the query path; this collector turns them into metric
families when Prometheus scrapes. It is created once per server (``env.collector``),
so several server blocks never register the same metric twice. A cache that
stops (reload, shutdown) folds its counters into the collector first, so counters stay
monotonic across a reload.

Names and labels are CoreDNS's (plugin/cache/metrics.go), without the ``view`` label.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from linkdns.plugins.cache.store import CLASS_NAMES

if TYPE_CHECKING:
    from linkdns.plugin import Env
    from linkdns.plugins.cache.handler import Cache

SHARED_KEY = "cache.collector"

# Counter slots of a (server, zones) row.
_REQ, _MISS, _PREFETCH, _DROP, _STALE, _HIT_S, _HIT_D, _EVICT_S, _EVICT_D = range(9)
_SLOTS = 9


def _counts(c: Cache) -> list[int]:
    out = [0] * _SLOTS
    out[_REQ] = c.requests
    out[_MISS] = c.misses
    out[_PREFETCH] = c.prefetches
    out[_DROP] = c.drops
    out[_STALE] = c.served_stale
    out[_HIT_S], out[_HIT_D] = c.hits
    out[_EVICT_S], out[_EVICT_D] = c.store.evictions
    return out


class CacheCollector(Collector):
    """Reads every live cache of one server at scrape time."""

    def __init__(self) -> None:
        self.caches: list[Cache] = []
        #: counters of caches that were stopped, by (server, zones)
        self.retired: dict[tuple[str, str], list[int]] = {}

    @staticmethod
    def labels(c: Cache) -> tuple[str, str]:
        server = c.env.label() if c.env is not None else ""
        return server, ",".join(c.zones)

    def retire(self, c: Cache) -> None:
        if c in self.caches:
            self.caches.remove(c)
            row = self.retired.setdefault(self.labels(c), [0] * _SLOTS)
            for i, v in enumerate(_counts(c)):
                row[i] += v

    def describe(self) -> Iterator[Metric]:
        g, cs = self._families()
        return iter([g, *cs])

    def collect(self) -> Iterator[Metric]:
        rows: dict[tuple[str, str], list[int]] = {k: list(v) for k, v in self.retired.items()}
        entries: dict[tuple[str, str], list[int]] = {}
        for c in self.caches:
            k = self.labels(c)
            row = rows.setdefault(k, [0] * _SLOTS)
            for i, v in enumerate(_counts(c)):
                row[i] += v
            ent = entries.setdefault(k, [0, 0])
            s, d = c.store.sizes()
            ent[0] += s
            ent[1] += d
        f_entries, cs = self._families()
        f_req, f_hits, f_miss, f_pf, f_drop, f_stale, f_evict = cs
        for (server, zones), ent in entries.items():
            for cls, n in enumerate(ent):
                f_entries.add_metric([server, CLASS_NAMES[cls], zones], n)
        for (server, zones), row in rows.items():
            f_req.add_metric([server, zones], row[_REQ])
            f_miss.add_metric([server, zones], row[_MISS])
            f_pf.add_metric([server, zones], row[_PREFETCH])
            f_drop.add_metric([server, zones], row[_DROP])
            f_stale.add_metric([server, zones], row[_STALE])
            f_hits.add_metric([server, "success", zones], row[_HIT_S])
            f_hits.add_metric([server, "denial", zones], row[_HIT_D])
            f_evict.add_metric([server, "success", zones], row[_EVICT_S])
            f_evict.add_metric([server, "denial", zones], row[_EVICT_D])
        return iter([f_entries, *cs])

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, list[CounterMetricFamily]]:
        typed = ["server", "type", "zones"]
        plain = ["server", "zones"]
        gauge = GaugeMetricFamily("coredns_cache_entries", "The number of elements in the cache.",
                                  labels=typed)
        return gauge, [
            CounterMetricFamily("coredns_cache_requests", "The count of cache requests.",
                                labels=plain),
            CounterMetricFamily("coredns_cache_hits", "The count of cache hits.", labels=typed),
            CounterMetricFamily(
                "coredns_cache_misses",
                "The count of cache misses. Deprecated, derive misses from cache "
                "hits/requests counters.", labels=plain),
            CounterMetricFamily("coredns_cache_prefetch",
                                "The number of times the cache has prefetched a cached item.",
                                labels=plain),
            CounterMetricFamily(
                "coredns_cache_drops",
                "The number responses that are not cached, because the reply is malformed.",
                labels=plain),
            CounterMetricFamily("coredns_cache_served_stale",
                                "The number of requests served from stale cache entries.",
                                labels=plain),
            CounterMetricFamily("coredns_cache_evictions", "The count of cache evictions.",
                                labels=typed),
        ]


def collector(env: Env) -> CacheCollector:
    """The collector of this server's registry (created and registered on first use)."""
    return env.collector(SHARED_KEY, CacheCollector)


def attach(env: Env, cache: Cache) -> None:
    coll = collector(env)
    if cache not in coll.caches:
        coll.caches.append(cache)


def detach(env: Env, cache: Cache) -> None:
    coll = env.find(SHARED_KEY)
    if isinstance(coll, CacheCollector):
        coll.retire(cache)
