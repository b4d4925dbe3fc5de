"""forward: which queries it takes (FROM, except, several lines), next/failover, policies,
failing over from dead upstreams."""

from __future__ import annotations

import time
from pathlib import Path

import dns.rcode
import pytest
from fakeupstream import Drop, FakeUpstream, nxdomain, servfail
from harness import Running
from test_forward import asked, corefile, dead_port, forwards

QUICK = "read_timeout 300ms"


def two_lines(first: str, second: str) -> str:
    return f". {{\n bind 127.0.0.1\n {first}\n {second}\n}}\n"


# -- FROM / except / several forward lines ----------------------------------------------------


def test_name_outside_from_goes_to_next_plugin(up: FakeUpstream) -> None:
    with Running(corefile(up, frm="example.org")) as srv:
        inside = srv.query("www.Example.org.")
        apex = srv.query("example.org.")
        outside = srv.query("www.example.net.")
    assert inside.rcode() == apex.rcode() == dns.rcode.NOERROR
    assert outside.rcode() == dns.rcode.SERVFAIL  # no plugin after forward
    assert asked(up, "www.example.net.") == 0


def test_except_names_go_to_next_plugin(up: FakeUpstream) -> None:
    with Running(corefile(up, opts="except internal.example other.example")) as srv:
        below = srv.query("a.internal.example.")
        at = srv.query("internal.example.")
        fine = srv.query("a.example.")
        sibling = srv.query("xinternal.example.")
    assert below.rcode() == at.rcode() == dns.rcode.SERVFAIL
    assert fine.rcode() == sibling.rcode() == dns.rcode.NOERROR
    assert [r.qname for r in up.queries] == ["a.example.", "xinternal.example."]


def test_several_forward_lines_are_tried_in_order(up: FakeUpstream, up2: FakeUpstream) -> None:
    cf = two_lines(f"forward example.org {up.addr}", f"forward . {up2.addr}")
    with Running(cf) as srv:
        srv.query("a.example.org.")
        srv.query("a.example.net.")
    assert [r.qname for r in up.queries] == ["a.example.org."]
    assert [r.qname for r in up2.queries] == ["a.example.net."]


def test_next_rcode_hands_the_query_to_the_next_forward(
        up: FakeUpstream, up2: FakeUpstream) -> None:
    up.handler = lambda q, p: nxdomain(q) if q.question[0].name.to_text() == "nx.test." else None
    cf = two_lines(f"forward . {up.addr} {{\n  next NXDOMAIN\n }}", f"forward . {up2.addr}")
    with Running(cf) as srv:
        r = srv.query("nx.test.")
        ok = srv.query("ok.test.")
    assert r.rcode() == dns.rcode.NOERROR  # up2's default answer
    assert ok.rcode() == dns.rcode.NOERROR
    assert (asked(up, "nx.test."), asked(up2, "nx.test.")) == (1, 1)
    assert asked(up2, "ok.test.") == 0


def test_next_without_a_following_forward_answers_the_reply(up: FakeUpstream) -> None:
    up.handler = lambda q, p: nxdomain(q)
    with Running(corefile(up, opts="next NXDOMAIN")) as srv:
        assert srv.query("nx.test.").rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize(("opts", "rcode", "second_asked"), [
    pytest.param("policy sequential\nfailover SERVFAIL", dns.rcode.NOERROR, 1, id="failover"),
    pytest.param("policy sequential", dns.rcode.SERVFAIL, 0, id="no-failover"),
])
def test_failover_rcode_moves_to_next_upstream(up: FakeUpstream, up2: FakeUpstream, opts: str,
                                               rcode: int, second_asked: int) -> None:
    up.handler = lambda q, p: servfail(q)
    with Running(corefile(up, up2, opts=opts)) as srv:
        assert srv.query("f.test.").rcode() == rcode
    assert asked(up, "f.test.") == 1 and asked(up2, "f.test.") == second_asked


def test_failover_everywhere_answers_the_last_reply(up: FakeUpstream, up2: FakeUpstream) -> None:
    up.handler = up2.handler = lambda q, p: servfail(q)
    with Running(corefile(up, up2, opts="policy sequential\nfailover SERVFAIL")) as srv:
        assert srv.query("f.test.").rcode() == dns.rcode.SERVFAIL
    assert asked(up, "f.test.") == 1 and asked(up2, "f.test.") == 1


# -- policies ---------------------------------------------------------------------------------


def test_round_robin_spreads_queries(up: FakeUpstream, up2: FakeUpstream) -> None:
    with Running(corefile(up, up2, opts="policy round_robin")) as srv:
        for i in range(10):
            srv.query(f"rr{i}.test.")
    assert (up.count(), up2.count()) == (5, 5)


def test_sequential_uses_the_first_while_it_answers(up: FakeUpstream, up2: FakeUpstream) -> None:
    with Running(corefile(up, up2, opts="policy sequential")) as srv:
        for i in range(5):
            srv.query(f"s{i}.test.")
    assert (up.count(), up2.count()) == (5, 0)


def test_random_uses_both(up: FakeUpstream, up2: FakeUpstream) -> None:
    with Running(corefile(up, up2)) as srv:
        for i in range(40):
            srv.query(f"x{i}.test.")
    assert up.count() > 0 and up2.count() > 0 and up.count() + up2.count() == 40


# -- dead upstreams ---------------------------------------------------------------------------


def test_dead_first_upstream_fails_over_to_the_second(up2: FakeUpstream) -> None:
    dead = f"127.0.0.1:{dead_port()}"
    with Running(corefile(dead, up2, opts="policy sequential")) as srv:
        t0 = time.monotonic()
        r = srv.query("d.test.")
        took = time.monotonic() - t0
    assert r.rcode() == dns.rcode.NOERROR and asked(up2, "d.test.") == 1
    assert took < 1.0  # ICMP port unreachable: no need to wait for the 2 s read timeout


def test_silent_first_upstream_fails_over_after_read_timeout(
        up: FakeUpstream, up2: FakeUpstream) -> None:
    up.handler = lambda q, p: Drop()
    with Running(corefile(up, up2, opts=f"policy sequential\n{QUICK}")) as srv:
        t0 = time.monotonic()
        r = srv.query("d.test.")
        took = time.monotonic() - t0
    assert r.rcode() == dns.rcode.NOERROR
    assert 0.3 <= took < 1.5
    assert asked(up, "d.test.") == 1 and asked(up2, "d.test.") == 1


def test_dead_tcp_upstream_fails_over(up2: FakeUpstream) -> None:
    dead = f"127.0.0.1:{dead_port()}"
    with Running(corefile(dead, up2, opts="policy sequential\nforce_tcp")) as srv:
        assert srv.query("d.test.").rcode() == dns.rcode.NOERROR
    assert asked(up2, "d.test.", "tcp") == 1


def test_max_connect_attempts_bounds_the_attempts(up: FakeUpstream, up2: FakeUpstream) -> None:
    up.handler = up2.handler = lambda q, p: Drop()
    opts = f"policy sequential\n{QUICK}\nmax_connect_attempts 1"
    with Running(corefile(up, up2, opts=opts)) as srv:
        assert srv.query("m.test.").rcode() == dns.rcode.SERVFAIL
    assert asked(up, "m.test.") + asked(up2, "m.test.") == 1


def test_query_timeout_bounds_the_whole_query(up: FakeUpstream, up2: FakeUpstream) -> None:
    up.handler = up2.handler = lambda q, p: Drop()
    opts = "policy sequential\nread_timeout 1s\nquery_timeout 500ms"
    with Running(corefile(up, up2, opts=opts)) as srv:
        t0 = time.monotonic()
        assert srv.query("q.test.").rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - t0 < 1.5  # 500 ms, not two 1 s read timeouts


def test_resolv_conf_upstreams_are_used(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text("nameserver 10.96.0.10\nnameserver 10.96.0.11\n")
    with Running(corefile(str(rc))) as srv:
        assert [u.addr for u in forwards(srv)[0].upstreams] == ["10.96.0.10:53",
                                                                "10.96.0.11:53"]
