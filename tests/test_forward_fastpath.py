"""The lean cache-miss path: reply validation without a record list, shared exchanges whose
waiters can be cancelled one by one, plain-integer forward metrics read at scrape time, and
the UDP pool's raw sockets."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import dns.message
import dns.rrset
import pytest
from fakeupstream import Drop, FakeUpstream, Reply, a_records
from harness import Running
from test_forward import corefile, forwards, sample

from linkdns import replies, wire
from linkdns.errors import UpstreamError, WireError
from linkdns.plugins.cache.handler import Cache
from linkdns.plugins.forward import udp as fwd_udp
from linkdns.plugins.forward.transport import Question, parses
from linkdns.request import Request
from linkdns.writer import Recorder


def walks(data: bytes) -> bool:
    try:
        replies.walk(data)
    except WireError:
        return False
    return True


def samples() -> list[bytes]:
    out = []
    for name in ("a.example.", "big.example.org.", "."):
        q = dns.message.make_query(name, "A", use_edns=0)
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.1", "192.0.2.2"))
        r.authority.append(dns.rrset.from_text(name, 60, "IN", "SOA", "ns. h. 1 2 3 4 5"))
        out += [q.to_wire(), r.to_wire()]
    return out


def test_parses_accepts_exactly_what_walk_accepts() -> None:
    rnd = random.Random(7)
    base = samples()
    checked = 0
    for _ in range(20000):
        d = bytearray(rnd.choice(base))
        for _ in range(rnd.randint(0, 3)):
            op = rnd.randint(0, 2)
            if op == 0 and d:
                d[rnd.randrange(len(d))] = rnd.randrange(256)
            elif op == 1 and d:
                del d[rnd.randrange(len(d)):]
            else:
                d.append(rnd.randrange(256))
        data = bytes(d)
        assert parses(data) == walks(data), data.hex()
        checked += walks(data)
    assert checked > 1000  # both outcomes were exercised
    for data in base:
        assert parses(data)


def request(name: str) -> Request:
    st, q = wire.scan_query(dns.message.make_query(name, "A").to_wire())
    assert st == 0 and q is not None
    return Request(q, ("127.0.0.1", 5300), "udp")


@pytest.mark.parametrize("cancel", [1, 0], ids=["a-waiter", "the-first"])
def test_cancelling_one_query_of_a_shared_forward_exchange(up: FakeUpstream,
                                                           cancel: int) -> None:
    up.handler = lambda q, p: Reply(a_records(q, 1), delay=0.3)
    with Running(corefile(up)) as srv:
        fwd = forwards(srv)[0]

        async def go() -> tuple[list[Any], list[Recorder], int, int]:
            reqs = [request("share.test.") for _ in range(3)]
            recs = [Recorder(r) for r in reqs]
            tasks = [asyncio.create_task(fwd.serve(r, w)) for r, w in zip(reqs, recs,
                                                                           strict=True)]
            await asyncio.sleep(0)  # each ran to its first await: one exchange, two waiters
            assert len(fwd.flights.waiting) == 1 and len(next(iter(fwd.flights.waiting.values()))) == 2
            for _ in range(1000):  # cancel mid-exchange: once the upstream has the query
                if up.count():
                    break
                await asyncio.sleep(0.005)
            tasks[cancel].cancel()
            rcs = await asyncio.gather(*tasks, return_exceptions=True)
            return rcs, recs, len(fwd.flights.waiting), fwd.concurrent

        rcs, recs, inflight, concurrent = srv.call(go())
    assert isinstance(rcs[cancel], asyncio.CancelledError)
    others = [i for i in range(3) if i != cancel]
    if cancel == 0:  # the exchange itself went away: its waiters fail, nothing hangs
        assert [rcs[i] for i in others] == [wire.SERVFAIL, wire.SERVFAIL]
    else:
        assert [rcs[i] for i in others] == [wire.NOERROR, wire.NOERROR]
        assert all(recs[i].reply is not None for i in others)
    assert inflight == 0 and concurrent == 0
    assert up.count() == 1


def test_cancelling_a_waiter_of_a_shared_cache_fetch(up: FakeUpstream) -> None:
    up.handler = lambda q, p: Reply(a_records(q, 1), delay=0.3)
    with Running(corefile(up, extra=" cache\n")) as srv:
        cache = next(h for h in srv.server.sites[0].handlers if isinstance(h, Cache))

        async def go() -> tuple[list[Any], list[Recorder], int]:
            reqs = [request("fetch.test.") for _ in range(3)]
            recs = [Recorder(r) for r in reqs]
            tasks = [asyncio.create_task(cache.serve(r, w)) for r, w in zip(reqs, recs,
                                                                             strict=True)]
            await asyncio.sleep(0)
            tasks[1].cancel()
            rcs = await asyncio.gather(*tasks, return_exceptions=True)
            return rcs, recs, len(cache._flights.waiting)

        rcs, recs, inflight = srv.call(go())
    assert isinstance(rcs[1], asyncio.CancelledError)
    assert rcs[0] == rcs[2] == wire.NOERROR
    assert recs[0].reply is not None and recs[2].reply is not None
    assert replies.walk(recs[0].reply)[1][0].ttl == 60
    assert inflight == 0 and up.count() == 1


def test_forward_metrics_are_read_at_scrape_time(up: FakeUpstream) -> None:
    with Running(corefile(up)) as srv:
        for i in range(6):
            srv.query(f"s{i}.test.")
        srv.query("t.test.", tcp=True)
        base = {"proxy_name": "forward", "to": up.addr}
        dur = "coredns_proxy_request_duration_seconds"
        assert sample(srv, f"{dur}_count", rcode="NOERROR", **base) == 7
        assert sample(srv, f"{dur}_bucket", rcode="NOERROR", le="+Inf", **base) == 7
        assert 0 < sample(srv, f"{dur}_sum", rcode="NOERROR", **base) < 7 * 2.0
        udp = {"proto": "udp", **base}
        # the pool opens POOL_SIZE (4) sockets before it reuses one
        assert sample(srv, "coredns_proxy_conn_cache_misses_total", **udp) == 4
        assert sample(srv, "coredns_proxy_conn_cache_hits_total", **udp) == 2
        assert sample(srv, "coredns_proxy_conn_cache_misses_total", proto="tcp", **base) == 1
        assert srv.registry.get_sample_value("coredns_proxy_conn_cache_hits_total",
                                             {"proto": "tcp", **base}) is None  # never used
        buckets = [s.labels["le"] for m in srv.registry.collect() if m.name == dur
                   for s in m.samples if s.name == f"{dur}_bucket"]
        assert buckets == ["0.00025", "0.0005", "0.001", "0.002", "0.004", "0.008", "0.016",
                           "0.032", "0.064", "0.128", "0.256", "0.512", "1.024", "2.048",
                           "4.096", "8.192", "+Inf"]


def test_udp_sockets_are_closed_at_stop(up: FakeUpstream) -> None:
    with Running(corefile(up)) as srv:
        for i in range(6):
            srv.query(f"c{i}.test.")
        pool = forwards(srv)[0].upstreams[0].udp
        socks = list(pool.active)
        assert socks and all(s.sock is not None for s in socks)
    assert not pool.active and all(s.sock is None for s in socks)


def test_pool_close_also_closes_retired_sockets_with_queries_in_flight(
        up: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fwd_udp, "MAX_USES", 1)  # every socket retires at its first query
    up.handler = lambda q, p: Drop()
    with Running(corefile(up)) as srv:
        pool = forwards(srv)[0].upstreams[0].udp
        req = request("drain.test.")

        async def go() -> fwd_udp.UdpSock:
            p = pool.send(req.data, Question.of(req.q), 5.0)
            s = p.sock
            assert s.retired and s in pool.draining and s.sock is not None
            pool.close()
            with pytest.raises(UpstreamError, match="use of closed network connection"):
                await p.fut
            pool.done(p)
            return s

        s = srv.call(go())
        assert s.sock is None and not pool.draining and not pool.active
