"""cache over real sockets: dnspython client -> linkdns (cache -> forward) -> FakeUpstream.

TTL ageing uses ``srv.server.clock.advance``; nothing sleeps. The helpers here are shared by
test_cache_refresh.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from fakeupstream import FakeUpstream, a_records, answer, nxdomain, refused, servfail
from harness import Running

ZONES = "."


@contextmanager
def cache_server(up: FakeUpstream, cache: str = "cache", *, before: str = "",
                 forward: str = "") -> Iterator[Running]:
    """A server block ``.`` with ``cache`` (text, may hold a block) forwarding to ``up``."""
    fwd = f"forward . {up.addr} {{\n{forward}\n}}" if forward else f"forward . {up.addr}"
    with Running(f".:0 {{\n bind 127.0.0.1\n {before}\n {cache}\n {fwd}\n}}\n") as srv:
        yield srv


def ttls(m: dns.message.Message) -> list[int]:
    return [rr.ttl for rr in m.answer + m.authority + m.additional]


def metric(srv: Running, name: str, zones: str = ZONES, **labels: str) -> float:
    labels = {"server": f"dns://127.0.0.1:{srv.port}", "zones": zones, **labels}
    v = srv.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def raw_exchange(port: int, wire: bytes, tcp: bool = False) -> bytes:
    """Send raw query bytes, return the raw reply bytes (UDP or TCP)."""
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(len(wire).to_bytes(2, "big") + wire)
            n = int.from_bytes(_recv(s, 2), "big")
            return _recv(s, n)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(wire, ("127.0.0.1", port))
        return s.recv(65535)


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


# -- TTLs -----------------------------------------------------------------------------------


def test_ttl_decreases_with_the_clock_and_upstream_is_asked_once(up: FakeUpstream) -> None:
    with cache_server(up) as srv:
        first = srv.query("www.example.org.")
        srv.server.clock.advance(10)
        second = srv.query("www.example.org.")
    assert ttls(first) == [60] and ttls(second) == [50]
    assert up.count() == 1


@pytest.mark.parametrize(
    ("cache", "upstream_ttl", "want"),
    [
        pytest.param("cache 30", 3600, 30, id="cache-30-caps-3600"),
        pytest.param("cache", 2, 5, id="ttl-2-raised-to-min-5"),
        pytest.param("cache {\n success 100 3600 1\n }", 2, 2, id="minttl-1-keeps-2"),
        pytest.param("cache", 86400, 3600, id="default-max-3600"),
    ],
)
def test_ttl_clamped_on_first_answer_and_hits(up: FakeUpstream, cache: str, upstream_ttl: int,
                                              want: int) -> None:
    up.handler = lambda q, proto: a_records(q, 2, upstream_ttl)
    with cache_server(up, cache) as srv:
        assert ttls(srv.query("c.example.org.")) == [want]
        assert ttls(srv.query("c.example.org.")) == [want]
    assert up.count() == 1


def test_every_record_carries_the_lowest_ttl(up: FakeUpstream) -> None:
    up.handler = lambda q, proto: answer(
        q, [("x.example.org.", 300, "CNAME", "y.example.org."), ("y.example.org.", 90, "A",
                                                                 "192.0.2.9")],
        authority=[("example.org.", 120, "NS", "ns.example.org.")])
    with cache_server(up) as srv:
        assert ttls(srv.query("x.example.org.")) == [90, 90, 90]
        srv.server.clock.advance(30)
        assert ttls(srv.query("x.example.org.")) == [60, 60, 60]


def test_nxdomain_ttl_from_soa_capped_by_denial_ttl(up: FakeUpstream) -> None:
    up.handler = lambda q, proto: nxdomain(q, 3600, 3600)
    with cache_server(up, "cache {\n denial 9984 5\n }") as srv:
        r = srv.query("gone.example.org.")
        assert r.rcode() == dns.rcode.NXDOMAIN and ttls(r) == [5]
        srv.server.clock.advance(4)
        assert ttls(srv.query("gone.example.org.")) == [1]
        assert up.count() == 1
        srv.server.clock.advance(1)
        assert srv.query("gone.example.org.").rcode() == dns.rcode.NXDOMAIN
        assert up.count() == 2


@pytest.mark.parametrize(
    ("cache", "upstream_queries"),
    [
        pytest.param("cache", 1, id="default-5s"),
        pytest.param("cache {\n servfail 0\n }", 3, id="servfail-0"),
        pytest.param("cache {\n no_negcache\n }", 3, id="no-negcache"),
    ],
)
def test_servfail_caching(up: FakeUpstream, cache: str, upstream_queries: int) -> None:
    up.handler = lambda q, proto: servfail(q)
    with cache_server(up, cache) as srv:
        for _ in range(3):
            assert srv.query("sf.example.org.").rcode() == dns.rcode.SERVFAIL
            srv.server.clock.advance(1)
        assert up.count() == upstream_queries
        srv.server.clock.advance(5)
        srv.query("sf.example.org.")
        assert up.count() == upstream_queries + 1


def test_no_negcache_flapping_upstream_never_pins_a_failure(up: FakeUpstream) -> None:
    """Upstream alternates SERVFAIL, answer, NXDOMAIN, answer...: a client sees a failure only
    when upstream just said so, and the answers get cached."""
    calls = 0

    def flap(q: dns.message.Message, proto: str) -> dns.message.Message:
        nonlocal calls
        calls += 1
        step = (calls - 1) % 3
        return servfail(q) if step == 0 else a_records(q, 1, 5) if step == 1 else nxdomain(q)

    up.handler = flap
    seen = []
    with cache_server(up, "cache {\n no_negcache\n }") as srv:
        for _ in range(12):
            before = up.count()
            r = srv.query("flap.example.org.")
            if r.rcode() != dns.rcode.NOERROR:
                assert up.count() == before + 1, "a failure came from the cache"
            seen.append(r.rcode())
            srv.server.clock.advance(2)
    assert dns.rcode.SERVFAIL in seen and dns.rcode.NXDOMAIN in seen
    assert seen.count(dns.rcode.NOERROR) > up.count() // 3  # answers were served from cache


def test_refused_and_formerr_are_not_cached(up: FakeUpstream) -> None:
    up.handler = lambda q, proto: refused(q)
    with cache_server(up) as srv:
        for _ in range(2):
            assert srv.query("r.example.org.").rcode() == dns.rcode.REFUSED
    assert up.count() == 2


# -- keys -----------------------------------------------------------------------------------


def test_mixed_case_shares_one_entry_and_echoes_the_client_case(up: FakeUpstream) -> None:
    with cache_server(up) as srv:
        for name in ("www.example.org.", "WWW.EXAMPLE.ORG.", "wWw.ExAmPlE.oRg."):
            r = srv.query(name)
            assert r.question[0].name.to_text() == name
            assert r.answer[0].name.to_text().lower() == "www.example.org."
    assert up.count() == 1


@pytest.mark.parametrize(
    "variants",
    [
        pytest.param([("A", {}), ("AAAA", {})], id="a-and-aaaa"),
        pytest.param([("A", {"use_edns": 0}), ("A", {"want_dnssec": True})], id="do-bit"),
        pytest.param([("A", {}), ("A", {"flags": dns.flags.RD | dns.flags.CD})], id="cd-bit"),
    ],
)
def test_separate_entries(up: FakeUpstream, variants: list[tuple[str, dict[str, Any]]]
                          ) -> None:
    with cache_server(up) as srv:
        for _ in range(2):
            for rdtype, kw in variants:
                srv.query("k.example.org.", rdtype, **kw)
    assert up.count() == 2


def test_edns_and_plain_clients_share_an_entry_with_their_own_opt(up: FakeUpstream) -> None:
    with cache_server(up) as srv:
        a = srv.query("o.example.org.", use_edns=0, payload=4000)
        b = srv.query("o.example.org.")
        c = srv.query("o.example.org.", use_edns=0, payload=1232)
    assert a.edns == 0 and a.payload == 4000
    assert b.edns == -1
    assert c.edns == 0 and c.payload == 1232
    assert up.count() == 1


def test_only_the_cache_zones_are_cached(up: FakeUpstream) -> None:
    with cache_server(up, "cache example.org") as srv:
        for _ in range(2):
            srv.query("in.example.org.")
            srv.query("out.example.net.")
    assert [q.qname for q in up.queries] == ["in.example.org.", "out.example.net.",
                                             "out.example.net."]


# -- flags and the AA policy ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "upstream_aa", "want"),
    [
        pytest.param("keep", True, True, id="keep-aa"),
        pytest.param("keep", False, False, id="keep-no-aa"),
        pytest.param("set", False, True, id="set"),
        pytest.param("clear", True, False, id="clear"),
    ],
)
@pytest.mark.parametrize("rdtype", ["A", "MX"])  # MX: NODATA (denial) from the default zone
def test_aa_policy_on_miss_and_hit(up: FakeUpstream, policy: str, upstream_aa: bool,
                                   want: bool, rdtype: str) -> None:
    def handler(q: dns.message.Message, proto: str) -> dns.message.Message:
        m = up.default_answer(q)
        m.flags = (m.flags | dns.flags.AA) if upstream_aa else (m.flags & ~dns.flags.AA)
        return m

    up.handler = handler
    with cache_server(up, f"cache {{\n aa {policy}\n }}") as srv:
        miss = srv.query("aa.example.org.", rdtype)
        hit = srv.query("aa.example.org.", rdtype)
    assert bool(miss.flags & dns.flags.AA) == want
    assert bool(hit.flags & dns.flags.AA) == want
    assert up.count() == 1


def test_aa_set_applies_to_replies_that_are_not_cached(up: FakeUpstream) -> None:
    up.handler = lambda q, proto: refused(q)
    with cache_server(up, "cache {\n aa set\n }") as srv:
        assert srv.query("n.example.org.").flags & dns.flags.AA


def test_hits_echo_rd_cd_and_clear_ad_unless_asked(up: FakeUpstream) -> None:
    def handler(q: dns.message.Message, proto: str) -> dns.message.Message:
        m = a_records(q, 1)
        m.flags |= dns.flags.AD
        return m

    up.handler = handler
    with cache_server(up) as srv:
        for _ in range(2):
            plain = srv.query("ad.example.org.", flags=0)
            asked = srv.query("ad.example.org.", flags=dns.flags.AD | dns.flags.RD)
            do = srv.query("ad.example.org.", want_dnssec=True, flags=dns.flags.CD)
            assert not plain.flags & (dns.flags.AD | dns.flags.RD | dns.flags.CD)
            assert plain.flags & dns.flags.RA
            assert asked.flags & dns.flags.AD and asked.flags & dns.flags.RD
            assert do.flags & dns.flags.AD and do.flags & dns.flags.CD


# -- sizes ----------------------------------------------------------------------------------


def test_large_cached_answer_truncated_for_plain_udp_and_whole_over_tcp(up: FakeUpstream
                                                                        ) -> None:
    up.handler = lambda q, proto: a_records(q, 40, compress=False)
    with cache_server(up) as srv:
        full = srv.query("big.example.org.", tcp=True)
        assert len(full.answer[0]) == 40
        udp = srv.query("big.example.org.")  # no EDNS: 512 bytes
        assert udp.flags & dns.flags.TC
        assert len(udp.to_wire()) <= 512
        edns = srv.query("big.example.org.", use_edns=0, payload=4096)
        assert not edns.flags & dns.flags.TC and len(edns.answer[0]) == 40
        again = srv.query("big.example.org.", tcp=True)
        assert len(again.answer[0]) == 40
    assert up.count() == 1


# -- hit path vs slow path on the wire -------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({}, id="plain"),
        pytest.param({"use_edns": 0, "payload": 1232}, id="edns"),
        pytest.param({"want_dnssec": True}, id="do"),
        pytest.param({"flags": dns.flags.RD | dns.flags.CD}, id="cd"),
    ],
)
@pytest.mark.parametrize("records", [1, 20, 60])  # 60: over 512 bytes, truncated without EDNS
def test_hit_path_and_slow_path_send_the_same_bytes(up: FakeUpstream, kw: dict[str, Any],
                                                    records: int) -> None:
    """The first answer (rendered on the slow path), a hit on the hit path and a hit served by
    a block whose hit path is off (``log`` in front of the cache) are the same bytes, truncation
    included; TCP gets the same bytes unless UDP had to truncate."""
    up.handler = lambda q, proto: (a_records(q, records, 300) if "nx" not in str(
        q.question[0].name) else nxdomain(q, 300, 300))
    for name in ("MiXed.Example.org.", "nx.example.org."):
        wire = dns.message.make_query(name, "A", **kw).to_wire()
        with cache_server(up) as fast, cache_server(up, before="log") as slow:
            assert fast.server.sites[0].fast and not slow.server.sites[0].fast
            miss = raw_exchange(fast.port, wire)
            hit = raw_exchange(fast.port, wire)
            raw_exchange(slow.port, wire)
            slow_hit = raw_exchange(slow.port, wire)
            tcp_hit = raw_exchange(fast.port, wire, tcp=True)
        assert miss == hit == slow_hit
        m = dns.message.from_wire(hit)
        assert m.question[0].name.to_text() == name
        truncated = bool(m.flags & dns.flags.TC)
        assert truncated == (records == 60 and "nx" not in name and "payload" not in kw
                             and "want_dnssec" not in kw)
        if truncated:
            assert len(dns.message.from_wire(tcp_hit).answer[0]) == 60
        else:
            assert tcp_hit == hit


# -- metrics --------------------------------------------------------------------------------


def test_metrics_count_requests_hits_misses_and_entries(up: FakeUpstream) -> None:
    up.handler = lambda q, proto: (nxdomain(q) if q.question[0].name.labels[0] == b"nx"
                                   else a_records(q, 1))
    with cache_server(up) as srv:
        for name in ("a.example.org.", "a.example.org.", "nx.example.org.", "nx.example.org.",
                     "nx.example.org.", "b.example.org."):
            srv.query(name)
        assert metric(srv, "coredns_cache_requests_total") == 6
        assert metric(srv, "coredns_cache_misses_total") == 3
        assert metric(srv, "coredns_cache_hits_total", type="success") == 1
        assert metric(srv, "coredns_cache_hits_total", type="denial") == 2
        assert metric(srv, "coredns_cache_entries", type="success") == 2
        assert metric(srv, "coredns_cache_entries", type="denial") == 1
        assert metric(srv, "coredns_cache_evictions_total", type="success") == 0
        assert srv.registry.get_sample_value("coredns_cache_prefetch_total", {
            "server": f"dns://127.0.0.1:{srv.port}", "zones": "."}) == 0


def test_two_blocks_share_one_collector() -> None:
    with FakeUpstream() as u, Running(
        f"example.org:0 {{\n bind 127.0.0.1\n cache\n forward . {u.addr}\n}}\n"
        f"example.net:0 {{\n bind 127.0.0.1\n cache 10\n forward . {u.addr}\n}}\n"
    ) as srv:
        for name in ("a.example.org.", "a.example.org.", "b.example.net."):
            srv.query(name)
        assert metric(srv, "coredns_cache_hits_total", zones="example.org.",
                      type="success") == 1
        assert metric(srv, "coredns_cache_misses_total", zones="example.net.") == 1
