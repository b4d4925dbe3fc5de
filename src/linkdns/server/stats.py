"""Per-zone request counters in plain integers, read by a Prometheus collector at scrape time.

The hit path increments list slots and dict entries here; no prometheus-client call is made
per query. Bucket bounds are CoreDNS's so dashboards keep working.
"""

from __future__ import annotations

from bisect import bisect_left

from linkdns.metrics import Hist

# plugin.TimeBuckets in CoreDNS: prometheus.ExponentialBuckets(0.00025, 2, 16)
TIME_BUCKETS: tuple[float, ...] = tuple(0.00025 * 2**i for i in range(16))
# CoreDNS plugin/metrics/vars: request/response size buckets
SIZE_BUCKETS: tuple[float, ...] = (
    0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3,
)

PROTOS = ("udp", "tcp")

#: Why a query got no reply at all (``linkdns_dropped_queries_total``'s ``reason``); every
#: listener exports each of these from 0. ``flood``: UDP query over the in-flight cap;
#: ``tcp_limit``: TCP connection closed at TCP_MAX_CONNECTIONS before it was read;
#: ``tcp_timeout``: TCP connection closed idle with a partial frame; ``malformed``: datagram
#: or frame without a readable header, or a response; ``acl``: the acl plugin's ``drop``;
#: ``shutdown``: arrived while the listener was stopping.
DROP_REASONS = ("flood", "tcp_limit", "tcp_timeout", "malformed", "acl", "shutdown")

# Hit-path constants: the responses key of each rcode for plugin "cache"; the first bucket.
_CACHE_KEYS: tuple[tuple[int, str], ...] = tuple((rc, "cache") for rc in range(16))
FIRST_TIME = TIME_BUCKETS[0]

# Types CoreDNS labels by name (plugin/pkg/dnstest? no: plugin/metrics/vars monitorType).
MONITORED_TYPES: dict[int, str] = {
    1: "A", 28: "AAAA", 5: "CNAME", 6: "SOA", 2: "NS", 12: "PTR", 15: "MX", 16: "TXT",
    33: "SRV", 43: "DS", 48: "DNSKEY", 46: "RRSIG", 47: "NSEC", 50: "NSEC3", 65: "HTTPS",
    251: "IXFR", 252: "AXFR", 255: "ANY",
}


def type_label(qtype: int) -> str:
    return MONITORED_TYPES.get(qtype, "other")


#: a cache hit as the hit path notes it: (qtype high byte, qtype low byte, TCP, IPv6, the
#: key's DO/CD byte, query length, reply length, reply byte 3 (rcode in its low bits))
HitSig = tuple[int, int, bool, bool, int, int, int, int]
#: distinct signatures the ledger holds before a new one folds it (its memory stays bounded
#: however long nobody scrapes: ~256 x 200 bytes)
LEDGER_MAX = 256


class ZoneStats:
    """Counters for one (server, zone): what coredns_dns_* metrics report.

    ``requests`` is keyed by ``qtype << 2 | (proto == "tcp") << 1 | (family == 2)`` so the hot
    path builds no tuple; ``responses`` by ``(rcode, plugin)``. Cache hits are noted in
    ``hits``, a ledger of hit signatures (a handful of distinct ones: types x sizes x
    families) and their counts, one dict increment per hit; :meth:`fold` moves it into the
    counters when they are read (the collector, on the loop), or when it holds LEDGER_MAX
    distinct signatures and a new one comes.
    """

    __slots__ = ("do_requests", "duration", "hits", "req_size", "requests", "resp_size",
                 "responses", "server", "zone")

    def __init__(self, server: str, zone: str) -> None:
        self.server = server
        self.zone = zone
        self.requests: dict[int, int] = {}
        self.do_requests = 0
        self.responses: dict[tuple[int, str], int] = {}
        self.duration = Hist(TIME_BUCKETS)
        self.req_size = (Hist(SIZE_BUCKETS), Hist(SIZE_BUCKETS))  # udp, tcp
        self.resp_size = (Hist(SIZE_BUCKETS), Hist(SIZE_BUCKETS))
        self.hits: dict[HitSig, int] = {}

    def count_hit(self, sig: HitSig, secs: float) -> None:
        """A cache hit (the UDP hit path inlines this)."""
        hits = self.hits
        c = hits.get(sig)
        if c is None:
            if len(hits) >= LEDGER_MAX:
                self.fold()
                hits = self.hits
            hits[sig] = 1
        else:
            hits[sig] = c + 1
        d = self.duration
        d.counts[0 if secs <= FIRST_TIME else bisect_left(d.bounds, secs)] += 1
        d.sum += secs

    def fold(self) -> None:
        """Move the hit ledger into the request/response counters and size histograms."""
        hits, self.hits = self.hits, {}
        requests, responses = self.requests, self.responses
        for (hi, lo, tcp, v6, flag, qsize, rsize, b3), n in hits.items():
            k = (hi << 8 | lo) << 2 | tcp << 1 | v6
            requests[k] = requests.get(k, 0) + n
            if flag & 1:
                self.do_requests += n
            h = self.req_size[tcp]
            h.counts[bisect_left(h.bounds, qsize)] += n
            h.sum += qsize * n
            rk = _CACHE_KEYS[b3 & 0xF]
            responses[rk] = responses.get(rk, 0) + n
            h = self.resp_size[tcp]
            h.counts[bisect_left(h.bounds, rsize)] += n
            h.sum += rsize * n

    def count_request(self, qtype: int, tcp: bool, v6: bool, do: bool, size: int) -> None:
        k = qtype << 2 | tcp << 1 | v6
        r = self.requests
        r[k] = r.get(k, 0) + 1
        if do:
            self.do_requests += 1
        self.req_size[tcp].observe(size)

    def count_response(self, rcode: int, plugin: str, tcp: bool, size: int, secs: float) -> None:
        k = (rcode, plugin)
        r = self.responses
        r[k] = r.get(k, 0) + 1
        self.resp_size[tcp].observe(size)
        self.duration.observe(secs)

    def request_rows(self) -> list[tuple[str, str, str, int]]:
        """(proto, family, type, count) rows with CoreDNS label values, merged by type label."""
        self.fold()
        rows: dict[tuple[str, str, str], int] = {}
        for k, n in self.requests.items():
            key = ("tcp" if k & 2 else "udp", "2" if k & 1 else "1", type_label(k >> 2))
            rows[key] = rows.get(key, 0) + n
        return [(*k, n) for k, n in rows.items()]


class ServerStats:
    """Everything the server counts outside any zone."""

    __slots__ = ("dropped", "drops", "panics", "zones")

    def __init__(self) -> None:
        self.zones: dict[tuple[str, str], ZoneStats] = {}
        self.dropped: ZoneStats | None = None
        self.panics = 0
        #: (server, reason) -> queries received and not answered (see DROP_REASONS)
        self.drops: dict[tuple[str, str], int] = {}

    def drop(self, server: str, reason: str) -> None:
        """Count one query ``server`` received and did not answer."""
        k = (server, reason)
        self.drops[k] = self.drops.get(k, 0) + 1

    def zone(self, server: str, zone: str) -> ZoneStats:
        zs = self.zones.get((server, zone))
        if zs is None:
            zs = self.zones[(server, zone)] = ZoneStats(server, zone)
        return zs
