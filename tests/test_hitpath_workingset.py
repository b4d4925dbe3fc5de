"""The hit path at real working sets: it looks in the cache's own index and nowhere else.

Before, the listener kept a memo of 8,192 query shapes in front of the cache (cleared when
full): a cyclic scan over more shapes than that made nearly every hit take the slow,
scanning route. Now nothing is remembered per shape; these tests pin that a scan over more
shapes than any old table answers every query on the in-place path, that the in-place path
gives the same bytes as the slow path's rendering for the query forms clients send, and that
it declines what it must not answer.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import pytest
from harness import Running

from linkdns import wire
from linkdns.plugins.cache import Cache, policy
from linkdns.request import Request
from linkdns.server.frontdoor import opt_shape
from linkdns.server.listen import Listener

PEER = ("127.0.0.1", 5353)
# Go's resolver (net/dnsclient_unix.go newRequest): EDNS0, UDP size 1232, no DO, no option.
OPT_GO = wire.make_opt(1232, False)
# systemd-resolved (dns_server_adjust_opt + dns_packet_append_opt): DO at its default
# feature level, the RFC 6975 DAU/DHU/N3U options, the link MTU minus headers (1472 here).
OPT_RESOLVED = wire.make_opt(1472, True, bytes((
    0, 5, 0, 7, 5, 7, 8, 10, 13, 14, 15,  # DAU: RSASHA1 ... ED25519
    0, 6, 0, 3, 1, 2, 4,  # DHU: SHA-1, SHA-256, SHA-384
    0, 7, 0, 1, 1)))  # N3U: SHA-1


def corefile(extra: str = "") -> str:
    return (".:0 {\n bind 127.0.0.1\n prometheus 127.0.0.1:0\n cache {\n  success 40000\n"
            f"  denial 40000\n{extra} }}\n forward . 127.0.0.1:9\n}}\n")


def name_wire(i: int) -> bytes:
    return wire.text_to_name(f"svc-{i}.ns-{i % 97}.svc.cluster.local")


def query(name: bytes, qtype: int, qid: int, opt: bytes = b"", flags: int = wire.RD) -> bytes:
    return (struct.pack(">HHHHHH", qid, flags, 1, 0, 0, 1 if opt else 0) + name
            + struct.pack(">HH", qtype, wire.C_IN) + opt)


def reply_for(q: bytes, i: int, ttl: int = 3600) -> bytes:
    """An upstream's answer to ``q`` (one A or AAAA record, no OPT)."""
    st, sq = wire.scan_query(q)
    assert st == 0 and sq is not None
    rdata = bytes((10, i >> 16 & 255, i >> 8 & 255, i & 255))
    if sq.qtype == wire.T_AAAA:
        rdata = b"\x20\x01\x0d\xb8" + bytes(8) + rdata
    head = q[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
    return (head + q[12 : sq.q_end] + b"\xc0\x0c" + struct.pack(">HHIH", sq.qtype, 1, ttl,
                                                                 len(rdata)) + rdata)


def cache_of(srv: Running) -> Cache:
    c = srv.server.sites[0].cache
    assert isinstance(c, Cache)
    return c


def listener(srv: Running) -> Listener:
    (ln,) = srv.server.listeners.values()
    return ln


def fill(srv: Running, queries: list[tuple[bytes, int]]) -> None:
    """Store an answer for each (query, i) straight into the cache, on the server's loop."""
    c = cache_of(srv)

    def store() -> None:
        for q, i in queries:
            st, sq = wire.scan_query(q)
            assert st == 0 and sq is not None
            assert c.store_reply(Request(sq, PEER, "udp"), reply_for(q, i), False) is not None

    srv.run(store, timeout=60)


class Counting:
    """Counts the queries that leave the in-place hit path (Listener.scanning_path)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = Listener.scanning_path

        def scanning_path(ln: Listener, *a: Any, **k: Any) -> Any:
            self.calls += 1
            return real(ln, *a, **k)

        monkeypatch.setattr(Listener, "scanning_path", scanning_path)


def exchange_all(port: int, datagrams: list[bytes], window: int = 200) -> list[bytes]:
    """Send every datagram (at most ``window`` unanswered), return the replies by ID order
    of sending (IDs must be unique); bounded by a 30 s deadline."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    s.settimeout(2.0)
    out: dict[int, bytes] = {}
    deadline = time.monotonic() + 30
    try:
        sent = 0
        while len(out) < len(datagrams):
            assert time.monotonic() < deadline, f"{len(out)} of {len(datagrams)} answered"
            while sent < len(datagrams) and sent - len(out) < window:
                s.sendto(datagrams[sent], ("127.0.0.1", port))
                sent += 1
            data = s.recv(65535)
            out[(data[0] << 8) | data[1]] = data
    finally:
        s.close()
    return [out[(d[0] << 8) | d[1]] for d in datagrams]


def test_a_cyclic_scan_over_18k_shapes_stays_on_the_in_place_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """9,000 names x (A, AAAA) = 18,000 shapes, more than the old memo (8,192) and its bit
    filter's window (16,384), asked in a cycle twice with Go's EDNS: every answer comes from
    the in-place path, none from the scanning one."""
    names = [name_wire(i) for i in range(9000)]
    shapes = [(n, t) for n in names for t in (wire.T_A, wire.T_AAAA)]
    with Running(corefile()) as srv:
        fill(srv, [(query(n, t, 1, OPT_GO), k) for k, (n, t) in enumerate(shapes)])
        assert len(cache_of(srv).store) == 18000
        counting = Counting(monkeypatch)
        for rnd in range(2):
            qs = [query(n, t, (k + rnd * 18000) & 0xFFFF, OPT_GO)
                  for k, (n, t) in enumerate(shapes)]
            # IDs repeat after 65536, not within one pass: unique per pass
            replies = exchange_all(srv.port, qs)
            for q, r in zip(qs, replies, strict=True):
                assert r[:2] == q[:2] and r[2] & 0x80 and r[3] & 0x0F == 0
                assert r[12 : len(q) - 11] == q[12 : len(q) - 11]  # the question, as asked
                assert (r[6] << 8 | r[7]) == 1  # one answer
        assert counting.calls == 0
        assert cache_of(srv).hits[0] == 36000


FORMS = {
    "plain": (b"", wire.RD),
    "go-edns-1232": (OPT_GO, wire.RD),
    "systemd-resolved-do-rfc6975": (OPT_RESOLVED, wire.RD),
    "edns-512-do": (wire.make_opt(512, True), wire.RD),
    "edns-small-size": (wire.make_opt(100, False), wire.RD),
    "cd": (OPT_GO, wire.RD | wire.CD),
    "no-rd-ad": (b"", wire.AD),
    "cookie": (wire.make_opt(1232, False, b"\x00\x0a\x00\x08" + bytes(range(8))), wire.RD),
    # an option whose last 11 bytes are Go's OPT: the question does not end 11 bytes early
    "option-tail-looks-like-an-opt": (wire.make_opt(1232, False, b"\xfd\xe9\x00\x0b" + OPT_GO),
                                      wire.RD),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_in_place_hits_equal_the_slow_path_rendering(form: str) -> None:
    opt, flags = FORMS[form]
    name = wire.text_to_name("Mixed.Case.Example")
    with Running(corefile("  keepttl\n")) as srv:
        fill(srv, [(query(name.lower(), wire.T_A, 7, opt, flags), 5)])
        assert opt_shape(OPT_GO) is not None  # Go's OPT is a known shape from now on
        c = cache_of(srv)
        q = query(name, wire.T_A, 0xBEEF, opt, flags)
        st, sq = wire.scan_query(q)
        assert st == 0 and sq is not None
        e = c.store.get(sq.key)
        assert e is not None
        want = policy.render(e, sq, c.ttl_for(e, c.now()))
        fast = srv.run(lambda: listener(srv).hit_wire(q, False, False, 0.0))
        if form == "cookie":
            assert fast is None  # a cookie is echoed per client: the scanning path answers
        elif form == "option-tail-looks-like-an-opt":
            assert fast is None  # taken for a Go OPT: no such key, so the scanning path
        else:
            assert fast is not None and bytes(fast) == want
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        try:
            s.sendto(q, ("127.0.0.1", srv.port))
            assert s.recv(65535) == want
        finally:
            s.close()


def test_what_the_in_place_path_must_decline() -> None:
    """Queries it must not answer from the cache, though a key built carelessly would hit."""
    name = wire.text_to_name("x.example")
    with Running(corefile()) as srv:
        # an answer for TYPE97 (0x0061) of x.example: lowercasing TYPE65 (0x0041, HTTPS)
        # would turn a HTTPS query into its key
        fill(srv, [(query(name, 97, 1), 1), (query(name, wire.T_A, 1), 2)])
        ln = listener(srv)
        cases = {
            "https-is-not-type97": query(name, 65, 2),
            "response-bit": query(name, wire.T_A, 3, flags=0x8000 | wire.RD),
            "opcode-notify": query(name, wire.T_A, 4, flags=0x2000),
            "two-questions": query(name, wire.T_A, 5)[:4] + b"\x00\x02" + query(
                name, wire.T_A, 5)[6:],
            "badvers": query(name, wire.T_A, 6, b"\x00\x00\x29\x04\xd0\x00\x01\x00\x00\x00\x00"),
            "opt-length-lies": query(name, wire.T_A, 7, OPT_GO[:-2] + b"\x00\x04"),
            "trailing-garbage": query(name, wire.T_A, 8) + b"\x00",
            "class-chaos": query(name, wire.T_A, 9)[:-2] + b"\x00\x03",
            "nul-in-a-label": query(b"\x03x\x00a" + name[2:], wire.T_A, 10),
        }
        for case, q in cases.items():
            assert srv.run(lambda q=q: ln.hit_wire(q, False, False, 0.0)) is None, case
        # the same name and type, asked properly, is a hit
        assert srv.run(lambda: ln.hit_wire(query(name, wire.T_A, 11), False, False, 0.0))


def test_routing_by_name_picks_the_longest_zone_with_several_blocks() -> None:
    """With several blocks on one listener the in-place path routes by the name's own
    bytes: each zone's cache answers its names, a name no cache holds goes the slow way."""
    cf = "".join(
        f"{z}:0 {{\n bind 127.0.0.1\n cache 100\n forward . 127.0.0.1:9\n}}\n"
        for z in ("cluster.local", "svc.cluster.local", "."))
    with Running(cf) as srv:
        (ln,) = srv.server.listeners.values()
        by_zone = {s.zones[0]: s for s in srv.server.sites}
        for zone, text in (("svc.cluster.local.", "a.b.svc.cluster.local"),
                           ("cluster.local.", "a.b.cluster.local"),
                           ("cluster.local.", "svc.xcluster.local.cluster.local"),
                           (".", "a.example")):
            r = srv.run(lambda text=text: ln.route_name(wire.text_to_name(text)))
            assert r is not None and r.site is by_zone[zone], text
        # the hit path routes before anything vouches for the name: a broken one must not
        # throw (its key then matches nothing)
        for broken in (b"\x3fab\x00", b"\x05cluster\x05local\x00", b"\x07cluster"):
            srv.run(lambda broken=broken: ln.route_name(broken))
        name = wire.text_to_name("a.b.svc.cluster.local")
        q = query(name, wire.T_A, 1)
        cache = by_zone["cluster.local."].cache
        assert isinstance(cache, Cache)
        st, sq = wire.scan_query(q)
        assert st == 0 and sq is not None

        def store_in_wrong_zone() -> None:
            assert cache.store_reply(Request(sq, PEER, "udp"), reply_for(q, 1), False)

        srv.run(store_in_wrong_zone)
        # stored in cluster.local's cache, but the name is svc.cluster.local's: not a hit
        assert srv.run(lambda: ln.hit_wire(q, False, False, 0.0)) is None


def test_hits_are_counted_through_the_ledger_exactly() -> None:
    """The hit path notes a hit as one ledger entry; folded, the counters hold what CoreDNS's
    would: requests by type, DO, cache responses by rcode, both size histograms (sums and
    buckets), one duration per hit."""
    name = wire.text_to_name("count.example")
    with Running(corefile()) as srv:
        fill(srv, [(query(name, wire.T_AAAA, 1, OPT_RESOLVED), 3)])
        ln = listener(srv)
        zs = srv.server.stats.zone(ln.name, ".")
        q = query(name, wire.T_AAAA, 2, OPT_RESOLVED)
        replies = exchange_all(srv.port, [q[:0] + bytes((0, i)) + q[2:] for i in range(7)])
        rlen = len(replies[0])

        def read() -> tuple[Any, ...]:
            zs.fold()
            return (dict(zs.requests), zs.do_requests, dict(zs.responses),
                    zs.req_size[0].sum, list(zs.req_size[0].counts), zs.resp_size[0].sum,
                    list(zs.resp_size[0].counts), sum(zs.duration.counts), dict(zs.hits))

        reqs, do, resps, qsum, qcounts, rsum, rcounts, durations, ledger = srv.run(read)
        assert reqs == {wire.T_AAAA << 2: 7} and do == 7 and resps == {(0, "cache"): 7}
        assert qsum == 7 * len(q) and rsum == 7 * rlen and durations == 7 and ledger == {}
        bounds = zs.req_size[0].bounds
        assert qcounts[next(i for i, b in enumerate(bounds) if len(q) <= b)] == 7
        assert rcounts[next(i for i, b in enumerate(bounds) if rlen <= b)] == 7
        assert sum(qcounts) == sum(rcounts) == 7
