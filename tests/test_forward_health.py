"""forward under load and failure: health checks, max_concurrent, shared in-flight queries,
metrics, and nothing left running after stop."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dns.rcode
from fakeupstream import Drop, FakeUpstream, Hold, Reply, a_records
from harness import Running, query
from test_forward import asked, corefile, forwards, parallel, sample, wait_until

# A dead upstream costs READ_TIMEOUT per try, so an answer faster than that skipped it. Long
# enough that a query's own round trip on a loaded machine stays well under it.
READ_TIMEOUT = 0.5
HC = f"policy sequential\nmax_fails 1\nhealth_check 50ms\nread_timeout {READ_TIMEOUT}s"


def test_health_checks_mark_down_and_back_up(up: FakeUpstream, up2: FakeUpstream) -> None:
    up.handler = lambda q, p: Drop()
    with Running(corefile(up, up2, opts=HC)) as srv:
        first = forwards(srv)[0].upstreams[0]
        assert srv.query("h1.test.").rcode() == dns.rcode.NOERROR  # via up2
        wait_until(first.down, what="first upstream down")
        assert any(r.qname == "." and r.qtype == "NS" for r in up.queries)  # probed
        assert sample(srv, "coredns_proxy_healthcheck_failures_total",
                      proxy_name="forward", to=up.addr) >= 1
        t0 = time.monotonic()
        assert srv.query("h2.test.").rcode() == dns.rcode.NOERROR
        assert time.monotonic() - t0 < READ_TIMEOUT  # skipped: no timeout on the dead one
        assert asked(up, "h2.test.") == 0 and asked(up2, "h2.test.") == 1
        up.handler = None  # it recovers; the probe notices
        wait_until(lambda: not first.down(), what="first upstream up again")
        srv.query("h3.test.")
    assert asked(up, "h3.test.") == 1 and asked(up2, "h3.test.") == 0


def test_max_fails_zero_disables_health_checks(up: FakeUpstream, up2: FakeUpstream) -> None:
    up.handler = lambda q, p: Drop()
    opts = "policy sequential\nmax_fails 0\nhealth_check 50ms\nread_timeout 100ms"
    with Running(corefile(up, up2, opts=opts)) as srv:
        for i in range(3):
            assert srv.query(f"z{i}.test.").rcode() == dns.rcode.NOERROR
        assert not forwards(srv)[0].health.tasks
    assert not any(r.qname == "." for r in up.queries)
    assert asked(up, "z2.test.") == 1  # never marked down: still tried first


def test_all_down_tries_one_at_random_and_counts_it(up: FakeUpstream) -> None:
    up.handler = lambda q, p: Drop()
    with Running(corefile(up, opts=HC)) as srv:
        fwd = forwards(srv)[0]
        srv.query("b1.test.")
        wait_until(fwd.upstreams[0].down, what="upstream down")
        up.handler = lambda q, p: None if q.question[0].name.to_text() == "b2.test." else Drop()
        assert srv.query("b2.test.").rcode() == dns.rcode.NOERROR
        assert sample(srv, "coredns_forward_healthcheck_broken_total") >= 1


def test_failfast_all_unhealthy_upstreams_answers_servfail_at_once(up: FakeUpstream) -> None:
    up.handler = lambda q, p: Drop()
    with Running(corefile(up, opts=HC + "\nfailfast_all_unhealthy_upstreams")) as srv:
        srv.query("f1.test.")
        wait_until(forwards(srv)[0].upstreams[0].down, what="upstream down")
        t0 = time.monotonic()
        assert srv.query("f2.test.").rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - t0 < READ_TIMEOUT
    assert asked(up, "f2.test.") == 0


def test_max_concurrent_refuses_and_counts(up: FakeUpstream) -> None:
    gate = threading.Event()  # the upstream holds its answers: both slots stay taken
    up.handler = lambda q, p: Hold(gate, a_records(q, 1))
    with Running(corefile(up, opts="max_concurrent 2")) as srv, ThreadPoolExecutor(2) as ex:
        try:
            held = [ex.submit(srv.query, f"c{i}.test.") for i in range(2)]
            up.wait_for(2, timeout=5)
            assert srv.query("c2.test.").rcode() == dns.rcode.REFUSED
        finally:
            gate.set()
        assert [f.result(5).rcode() for f in held] == [dns.rcode.NOERROR, dns.rcode.NOERROR]
        assert sample(srv, "coredns_forward_max_concurrent_rejects_total") == 1
        assert srv.query("after.test.").rcode() == dns.rcode.NOERROR  # slots given back
    assert asked(up, "c2.test.") == 0


def waiting(srv: Running) -> int:
    """How many queries wait on another one's upstream exchange (read on the server's loop)."""
    fwd = forwards(srv)[0]
    return srv.run(lambda: sum(len(w) for w in fwd.flights.waiting.values()))


def test_identical_queries_in_flight_share_one_upstream_query(up: FakeUpstream) -> None:
    gate = threading.Event()  # the first exchange stays open until all five are in
    up.handler = lambda q, p: Hold(gate, a_records(q, 1))
    names = ["same.test.", "SAME.test.", "same.test.", "Same.Test.", "same.test."]
    with Running(corefile(up)) as srv, ThreadPoolExecutor(len(names)) as ex:
        try:
            futs = [ex.submit(srv.query, n) for n in names]
            wait_until(lambda: waiting(srv) == 4, timeout=5, what="4 queries sharing the first")
        finally:
            gate.set()
        res = [f.result(5) for f in futs]
    assert all(r.rcode() == dns.rcode.NOERROR and len(r.answer) == 1 for r in res)
    assert [str(r.question[0].name) for r in res][1] == "SAME.test."  # client's case kept
    assert asked(up, "same.test.") + asked(up, "SAME.test.") + asked(up, "Same.Test.") == 1


def test_different_queries_are_not_merged(up: FakeUpstream) -> None:
    up.handler = lambda q, p: Reply(a_records(q, 1), delay=0.1)
    with Running(corefile(up)) as srv:
        parallel(lambda a: query(srv.port, "m.test.", a), ["A", "AAAA"])
    assert up.count() == 2


def test_request_duration_and_conn_cache_metrics(up: FakeUpstream) -> None:
    with Running(corefile(up)) as srv:
        for i in range(3):
            srv.query(f"m{i}.test.")
        base = {"proxy_name": "forward", "to": up.addr}
        assert sample(srv, "coredns_proxy_request_duration_seconds_count",
                      rcode="NOERROR", **base) == 3
        hits = sample(srv, "coredns_proxy_conn_cache_hits_total", proto="udp", **base)
        misses = sample(srv, "coredns_proxy_conn_cache_misses_total", proto="udp", **base)
        assert hits + misses == 3 and misses >= 1


def test_two_blocks_share_the_metric_families(up: FakeUpstream) -> None:
    cf = (f".:0 {{\n bind 127.0.0.1\n forward . {up.addr}\n}}\n"
          f"example.org:0 {{\n bind 127.0.0.2\n forward . {up.addr}\n}}\n")
    with Running(cf) as srv:
        a, b = (s.handlers[-1] for s in srv.server.sites)
        assert a.metrics is b.metrics  # type: ignore[attr-defined]


def test_nothing_keeps_running_after_stop(up: FakeUpstream) -> None:
    up.handler = lambda q, p: Drop()
    with Running(corefile(up, opts="health_check 10ms\nread_timeout 100ms")) as srv:
        fwd = forwards(srv)[0]
        srv.query("s.test.")
        wait_until(lambda: bool(fwd.health.tasks), what="probe running")
        srv.call(srv.server.stop())

        async def others() -> list[asyncio.Task[object]]:
            me = asyncio.current_task()
            return [t for t in asyncio.all_tasks() if t is not me]

        assert srv.call(others()) == []
        assert not fwd.health.tasks and fwd._sweeper is None
        assert all(not u.udp.active and not u.tcp.idle for u in fwd.upstreams)
