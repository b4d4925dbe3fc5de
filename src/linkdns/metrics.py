"""What metric code shares: CoreDNS's label values and buckets, histograms as Prometheus
wants them, build info, and the health plugin's self-check counters.

The server's own ``coredns_dns_*`` families are in server/metrics.py.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from linkdns import __version__, wire

if TYPE_CHECKING:
    from linkdns.plugin import Env

class Hist:
    """Bucket counts (non-cumulative; the last slot is +Inf), sum and count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v

    @property
    def count(self) -> int:
        return sum(self.counts)

    def merge(self, other: Hist) -> None:
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.sum += other.sum


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


def register_health(env: Env) -> HealthStats:
    """The process-wide health self-check counters, registered on first call only."""
    return env.collector("metrics.health", lambda: HealthCollector(HealthStats())).stats
