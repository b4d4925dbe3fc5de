"""cache over real sockets: prefetch, serve_stale (immediate, verify), shared misses, capacity."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import dns.message
import dns.rcode
import pytest
from fakeupstream import Drop, FakeUpstream, HandlerResult, Hold, Reply, a_records, servfail
from harness import Running
from test_cache import cache_server, metric, ttls

from linkdns.plugins.cache import Cache
from linkdns.plugins.cache import handler as cache_handler


def settle(srv: Running) -> None:
    """Wait (bounded) until the cache's background refreshes are done. They are spawned before
    the reply that triggers them is sent, so by the time the client has it they exist."""
    cache = srv.server.sites[0].cache
    assert isinstance(cache, Cache)

    async def wait() -> None:
        while cache.background.tasks:
            await asyncio.wait(set(cache.background.tasks), timeout=3)

    srv.call(wait(), timeout=5)


def entry_ttl(srv: Running, name: str) -> int:
    """The TTL a client gets now (a query; may trigger what the test is about)."""
    return ttls(srv.query(name))[0]


# -- prefetch -------------------------------------------------------------------------------


def test_prefetch_refreshes_a_popular_entry_in_the_background(up: FakeUpstream) -> None:
    up.handler = lambda q, proto: a_records(q, 1, 10)
    with cache_server(up, "cache {\n prefetch 2 1m 50%\n }") as srv:
        clock = srv.server.clock
        assert entry_ttl(srv, "p.example.org.") == 10  # miss
        clock.advance(1)
        assert entry_ttl(srv, "p.example.org.") == 9  # hit 1
        clock.advance(5)
        assert entry_ttl(srv, "p.example.org.") == 4  # hit 2, TTL 4 <= 5: prefetch, answer now
        up.wait_for(2)
        settle(srv)
        assert entry_ttl(srv, "p.example.org.") == 10  # the refreshed entry
        assert metric(srv, "coredns_cache_prefetch_total") == 1
    assert up.count() == 2


def test_prefetch_needs_amount_hits_within_duration(up: FakeUpstream) -> None:
    up.handler = lambda q, proto: a_records(q, 1, 100)
    with cache_server(up, "cache {\n prefetch 3 10s 90%\n }") as srv:
        clock = srv.server.clock
        srv.query("p.example.org.")
        for _ in range(3):  # TTL under 90 but the hits are 11 s apart: never 3 within 10 s
            clock.advance(11)
            srv.query("p.example.org.")
        assert up.count() == 1
        clock.advance(1)
        srv.query("p.example.org.")  # 2 hits within 10 s
        assert up.count() == 1
        clock.advance(1)
        srv.query("p.example.org.")  # 3: prefetch
        up.wait_for(2)
        settle(srv)


def test_at_most_one_refresh_per_entry(up: FakeUpstream) -> None:
    calls = 0
    gate = threading.Event()  # the refresh stays in flight until the ten hits are done

    def slow_refresh(q: dns.message.Message, proto: str) -> HandlerResult:
        nonlocal calls
        calls += 1
        return a_records(q, 1, 10) if calls == 1 else Hold(gate, a_records(q, 1, 10))

    up.handler = slow_refresh
    with cache_server(up, "cache {\n prefetch 1 1m 90%\n }") as srv:
        srv.query("one.example.org.")
        srv.server.clock.advance(3)
        try:
            for _ in range(10):
                assert ttls(srv.query("one.example.org.")) == [7]
        finally:
            gate.set()
        settle(srv)
    assert up.count() == 2


# -- serve_stale immediate -------------------------------------------------------------------


def test_stale_immediate_answers_ttl_0_and_refreshes(up: FakeUpstream) -> None:
    up.handler = lambda q, proto: a_records(q, 1, 5)
    with cache_server(up, "cache {\n serve_stale\n }") as srv:
        srv.query("s.example.org.")
        srv.server.clock.advance(30)
        r = srv.query("s.example.org.")
        assert r.rcode() == dns.rcode.NOERROR and ttls(r) == [0]
        up.wait_for(2)
        settle(srv)
        assert entry_ttl(srv, "s.example.org.") == 5
        assert metric(srv, "coredns_cache_served_stale_total") == 1


def test_stale_refresh_servfail_does_not_hide_the_stale_answer(up: FakeUpstream) -> None:
    """CoreDNS 1.13 stores the refresh's SERVFAIL and answers it for 5 s; we keep stale."""
    up.handler = lambda q, proto: a_records(q, 1, 5)
    with cache_server(up, "cache {\n serve_stale 1h immediate\n }") as srv:
        srv.query("s.example.org.")
        up.handler = lambda q, proto: servfail(q)
        srv.server.clock.advance(30)
        for n in range(3):
            r = srv.query("s.example.org.")
            assert r.rcode() == dns.rcode.NOERROR and ttls(r) == [0]
            up.wait_for(2 + n)
            settle(srv)
            srv.server.clock.advance(1)
        assert metric(srv, "coredns_cache_served_stale_total") == 3


def test_stale_window_ends(up: FakeUpstream) -> None:
    up.handler = lambda q, proto: a_records(q, 1, 5)
    with cache_server(up, "cache {\n serve_stale 10s\n }") as srv:
        srv.query("w.example.org.")
        srv.server.clock.advance(5 + 10)  # expired exactly 10 s ago: outside [0, 10)
        up.handler = lambda q, proto: servfail(q)
        assert srv.query("w.example.org.").rcode() == dns.rcode.SERVFAIL
        assert metric(srv, "coredns_cache_served_stale_total") == 0


# -- serve_stale verify ----------------------------------------------------------------------


VERIFY = "cache {\n serve_stale 1h verify\n }"


def test_stale_verify_prefers_a_fresh_upstream_answer(up: FakeUpstream) -> None:
    up.handler = lambda q, proto: a_records(q, 1, 5)
    with cache_server(up, VERIFY) as srv:
        srv.query("v.example.org.")
        srv.server.clock.advance(30)
        up.handler = lambda q, proto: a_records(q, 1, 7, first="192.0.2.77")
        r = srv.query("v.example.org.")
        assert ttls(r) == [7] and r.answer[0][0].address == "192.0.2.77"
        assert metric(srv, "coredns_cache_served_stale_total") == 0
    assert up.count() == 2


@pytest.mark.parametrize(
    ("failure", "forward"),
    [
        pytest.param(lambda q, proto: servfail(q), "", id="servfail"),
        pytest.param(lambda q, proto: Drop(), "read_timeout 100ms\n query_timeout 200ms",
                     id="forward-gives-up"),
    ],
)
def test_stale_verify_answers_stale_when_upstream_fails(up: FakeUpstream, failure: object,
                                                        forward: str) -> None:
    up.handler = lambda q, proto: a_records(q, 1, 5)
    with cache_server(up, VERIFY, forward=forward) as srv:
        srv.query("v.example.org.")
        srv.server.clock.advance(30)
        up.handler = failure  # type: ignore[assignment]
        for _ in range(2):
            r = srv.query("v.example.org.")
            assert r.rcode() == dns.rcode.NOERROR and ttls(r) == [0]
        assert metric(srv, "coredns_cache_served_stale_total") == 2


def test_stale_verify_answers_stale_when_upstream_is_slow(up: FakeUpstream,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_handler, "VERIFY_TIMEOUT", 0.15)
    up.handler = lambda q, proto: a_records(q, 1, 5)
    with cache_server(up, VERIFY, forward="read_timeout 2s") as srv:
        srv.query("v.example.org.")
        srv.server.clock.advance(30)
        up.handler = lambda q, proto: Reply(a_records(q, 1, 9), delay=1.0)
        t0 = time.monotonic()
        r = srv.query("v.example.org.")
        assert time.monotonic() - t0 < 1.0  # did not wait for the upstream's answer
        assert ttls(r) == [0]
        settle(srv)
        assert entry_ttl(srv, "v.example.org.") == 9  # the late answer was still stored


# -- shared misses and capacity --------------------------------------------------------------


def test_identical_misses_in_flight_share_one_upstream_query(up: FakeUpstream) -> None:
    """Queries that only differ in what forward keys on (EDNS size, RD) still share."""
    up.handler = lambda q, proto: Reply(a_records(q, 1), delay=0.2)
    variants = [
        dns.message.make_query("same.example.org.", "A"),
        dns.message.make_query("same.example.org.", "A", use_edns=0, payload=1232),
        dns.message.make_query("same.example.org.", "A", use_edns=0, payload=4096),
        dns.message.make_query("SAME.example.org.", "A", flags=0),
    ]
    with cache_server(up) as srv:
        socks = []
        for m in variants:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(3)
            s.sendto(m.to_wire(), ("127.0.0.1", srv.port))
            socks.append(s)
        for m, s in zip(variants, socks, strict=True):
            r = dns.message.from_wire(s.recv(65535))
            s.close()
            assert r.id == m.id and r.rcode() == dns.rcode.NOERROR
            assert r.question[0].name.to_text() == m.question[0].name.to_text()
            assert (r.edns >= 0) == (m.edns >= 0)
    assert up.count() == 1


def test_flood_of_3000_names_never_grows_past_capacity(up: FakeUpstream) -> None:
    with cache_server(up, "cache {\n success 1024\n }") as srv:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        try:
            for batch in range(0, 3000, 250):
                for i in range(batch, batch + 250):
                    s.sendto(dns.message.make_query(f"n{i}.example.org.", "A").to_wire(),
                             ("127.0.0.1", srv.port))
                for _ in range(250):
                    s.recv(65535)
                assert metric(srv, "coredns_cache_entries", type="success") <= 1024
        finally:
            s.close()
        assert metric(srv, "coredns_cache_entries", type="success") == 1024
        assert metric(srv, "coredns_cache_evictions_total", type="success") == 3000 - 1024
        assert metric(srv, "coredns_cache_misses_total") == 3000
    assert up.count() == 3000


def test_capacity_0_disables_that_class(up: FakeUpstream) -> None:
    with cache_server(up, "cache {\n success 0\n }") as srv:
        for _ in range(3):
            srv.query("zero.example.org.")
        srv.query("zero.example.org.", "MX")  # NODATA: the denial class still works
        srv.query("zero.example.org.", "MX")
        assert metric(srv, "coredns_cache_entries", type="success") == 0
    assert up.count() == 4
