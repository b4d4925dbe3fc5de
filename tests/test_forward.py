"""forward on the wire: large answers, protocol choice, TC retry, reply validation, TCP reuse.

Also holds the helpers the other test_forward_* modules import.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from fakeupstream import (
    CloseTCP,
    Drop,
    FakeUpstream,
    FromWrongPort,
    Garbage,
    Multi,
    Reply,
    Truncated,
    WrongID,
    WrongQuestion,
    a_records,
    sequence,
)
from harness import Running, free_port

from linkdns import replies
from linkdns.plugins.forward import Forward
from linkdns.plugins.forward import udp as fwd_udp

# -- helpers (imported by test_forward_routing / test_forward_health) -----------------------


def corefile(*ups: FakeUpstream | str, opts: str = "", frm: str = ".", extra: str = "") -> str:
    """A block with ``bind 127.0.0.1`` and one forward line to ``ups`` (+ ``opts`` lines)."""
    to = " ".join(u if isinstance(u, str) else u.addr for u in ups)
    block = f" {{\n{opts}\n }}" if opts else ""
    return f". {{\n bind 127.0.0.1\n forward {frm} {to}{block}\n{extra}}}\n"


def forwards(srv: Running) -> list[Forward]:
    return [h for h in srv.server.sites[0].handlers if isinstance(h, Forward)]


def asked(up: FakeUpstream, name: str, proto: str | None = None) -> int:
    """How many queries for ``name`` (health probes excluded) ``up`` received."""
    return sum(1 for r in up.queries if r.qname == name and (proto is None or r.proto == proto))


def dead_port() -> int:
    """A port on 127.0.0.1 nobody listens on (UDP: ICMP unreachable, TCP: RST).

    Below the ephemeral range (``free_port``): a socket bound to port 0 later -- forward's own
    upstream sockets, a FakeUpstream -- cannot land on it and answer (or eat) the queries."""
    return free_port()


def parallel(fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
    """Run ``fn`` over ``args`` at once; exceptions are returned, not raised."""
    def safe(a: Any) -> Any:
        try:
            return fn(a)
        except Exception as e:
            return e
    with ThreadPoolExecutor(max_workers=len(args)) as ex:
        return list(ex.map(safe, args))


def wait_until(cond: Callable[[], bool], timeout: float = 3.0, what: str = "condition") -> None:
    """Poll state that the server's own timers change (health probes), with a bound."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(0.01)


def sample(srv: Running, name: str, **labels: str) -> float:
    v = srv.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


BIG = "big.test."  # 40 A records, names uncompressed: 1 KB+ (over 512, under 1232)


def big_handler(q: dns.message.Message, proto: str) -> Any:
    if q.question and q.question[0].name.to_text() == BIG:
        return a_records(q, 40, compress=False)
    return None


def rrs(m: dns.message.Message) -> int:
    return sum(len(r) for r in m.answer)


def tc(m: dns.message.Message) -> bool:
    return bool(m.flags & dns.flags.TC)


# -- large answers ----------------------------------------------------------------------------


def test_large_answer_reaches_edns_client_whole(up: FakeUpstream) -> None:
    up.handler = big_handler
    with Running(corefile(up)) as srv:
        r = srv.query(BIG, use_edns=0, payload=1232)
    assert r.rcode() == dns.rcode.NOERROR and rrs(r) == 40 and not tc(r)


def test_large_answer_non_edns_client_tc_then_whole_over_tcp(up: FakeUpstream) -> None:
    up.handler = big_handler
    with Running(corefile(up)) as srv:
        r = srv.query(BIG)
        assert tc(r) and rrs(r) < 40
        r = srv.query(BIG, tcp=True)
    assert rrs(r) == 40 and not tc(r)
    assert [q.proto for q in up.queries if q.qname == BIG] == ["udp", "tcp"]


def test_upstream_udp_reply_is_read_whole_whatever_was_advertised(up: FakeUpstream) -> None:
    # 150 uncompressed A records (~3.6 KB) to a query that advertised no EDNS at all.
    up.handler = lambda q, p: a_records(q, 150, compress=False)
    with Running(corefile(up)) as srv:
        r = srv.query("huge.test.", use_edns=0, payload=4096)
    assert r.rcode() == dns.rcode.NOERROR and rrs(r) == 150 and not tc(r)
    assert up.count("tcp") == 0


def test_bufsize_offers_size_upstream_and_truncates_for_the_client() -> None:
    with FakeUpstream(respect_udp_size=True) as up:
        up.handler = big_handler
        with Running(corefile(up, opts="bufsize 1232")) as srv:
            r = srv.query(BIG)  # no OPT from the client
            assert tc(r)
            full = srv.query(BIG, tcp=True)
        rec = up.queries[0]
        assert rec.has_edns and rec.edns_payload == 1232
        assert up.count("tcp") == 1  # only the client's own TCP retry
        assert rrs(full) == 40


@pytest.mark.parametrize(("opts", "upstream_protos"), [
    pytest.param("bufsize 1232", ["udp"], id="bufsize-whole-over-udp"),
    pytest.param("", ["udp", "tcp"], id="tc-then-our-tcp-retry"),
])
def test_client_tcp_retry_is_answered_from_cache(opts: str, upstream_protos: list[str]) -> None:
    with FakeUpstream(respect_udp_size=True) as up:
        up.handler = big_handler
        cf = corefile(up, opts=opts, extra=" cache 30\n")
        with Running(cf) as srv:
            assert tc(srv.query(BIG))
            full = srv.query(BIG, tcp=True)
        assert rrs(full) == 40 and not tc(full)
        assert [q.proto for q in up.queries] == upstream_protos


def test_bufsize_replaces_a_larger_client_size(up: FakeUpstream) -> None:
    with Running(corefile(up, opts="bufsize 1400")) as srv:
        srv.query("a.test.", use_edns=0, payload=4096, want_dnssec=True)
    rec = up.queries[0]
    assert rec.edns_payload == 1400
    assert up.messages[0].ednsflags & dns.flags.DO


def test_without_bufsize_the_client_opt_goes_upstream_as_is(up: FakeUpstream) -> None:
    with Running(corefile(up)) as srv:
        srv.query("a.test.", use_edns=0, payload=3000)
        srv.query("b.test.")
    assert [(r.has_edns, r.edns_payload) for r in up.queries] == [(True, 3000), (False, None)]


# -- TC over UDP ------------------------------------------------------------------------------


def test_tc_over_udp_is_retried_once_over_tcp(up: FakeUpstream) -> None:
    up.handler = lambda q, p: Truncated()
    with Running(corefile(up)) as srv:
        r = srv.query("t.test.", use_edns=0)
    assert r.rcode() == dns.rcode.NOERROR and rrs(r) == 1 and not tc(r)
    assert [q.proto for q in up.queries] == ["udp", "tcp"]


def test_tc_then_tcp_failure_moves_to_next_upstream(up: FakeUpstream, up2: FakeUpstream) -> None:
    up.handler = lambda q, p: Truncated(tcp=CloseTCP())
    with Running(corefile(up, up2, opts="policy sequential")) as srv:
        r = srv.query("t.test.", use_edns=0)
    assert r.rcode() == dns.rcode.NOERROR and rrs(r) == 1
    assert (asked(up, "t.test.", "udp"), asked(up, "t.test.", "tcp")) == (1, 1)
    assert asked(up2, "t.test.") == 1


# -- protocol choice --------------------------------------------------------------------------


@pytest.mark.parametrize(("opts", "client_tcp", "want"), [
    pytest.param("", False, "udp", id="default-udp-client"),
    pytest.param("", True, "tcp", id="default-tcp-client"),
    pytest.param("force_tcp", False, "tcp", id="force_tcp"),
    pytest.param("prefer_udp", True, "udp", id="prefer_udp"),
    pytest.param("force_tcp\nprefer_udp", True, "tcp", id="force_tcp-wins"),
    pytest.param("force_tcp\nprefer_udp", False, "tcp", id="force_tcp-wins-udp-client"),
])
def test_protocol_choice(up: FakeUpstream, opts: str, client_tcp: bool, want: str) -> None:
    with Running(corefile(up, opts=opts)) as srv:
        r = srv.query("p.test.", tcp=client_tcp)
    assert r.rcode() == dns.rcode.NOERROR
    assert [q.proto for q in up.queries if q.qname == "p.test."] == [want]


# -- validation -------------------------------------------------------------------------------

FAST = "read_timeout 300ms\nmax_fails 0"


@pytest.mark.parametrize("bad", [
    pytest.param(WrongID(), id="wrong-id"),
    pytest.param(WrongQuestion(), id="wrong-question"),
    pytest.param(WrongQuestion(qname=None, qtype="AAAA"), id="wrong-qtype"),
    pytest.param(FromWrongPort(), id="wrong-source-port"),
])
def test_mismatched_reply_is_ignored_and_the_right_one_later_accepted(
        up: FakeUpstream, bad: Any) -> None:
    up.handler = lambda q, p: Multi(bad, Reply(a_records(q, 1, first="192.0.2.99"), delay=0.05))
    with Running(corefile(up, opts=FAST)) as srv:
        r = srv.query("v.test.")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.answer[0][0].address == "192.0.2.99"


@pytest.mark.parametrize("bad", [
    pytest.param(WrongID(), id="wrong-id"),
    pytest.param(WrongQuestion(), id="wrong-question"),
    pytest.param(FromWrongPort(), id="wrong-source-port"),
])
def test_only_mismatched_replies_give_servfail_after_the_timeout(
        up: FakeUpstream, bad: Any) -> None:
    up.handler = lambda q, p: bad
    with Running(corefile(up, opts=FAST)) as srv:
        t0 = time.monotonic()
        r = srv.query("v.test.")
        took = time.monotonic() - t0
    assert r.rcode() == dns.rcode.SERVFAIL
    assert 0.3 <= took < 1.5  # two attempts of 300 ms (one upstream: tried twice)
    assert asked(up, "v.test.") == 2


@pytest.mark.parametrize("junk", [
    pytest.param(lambda q: Garbage(), id="seven-bytes"),
    pytest.param(lambda q: Garbage.truncated_body(q), id="right-id-cut-body"),
    pytest.param(lambda q: Garbage(b"\x00" * 40), id="zeros"),
])
def test_garbage_gives_servfail_fast_with_bounded_attempts(
        up: FakeUpstream, junk: Callable[[dns.message.Message], Any]) -> None:
    up.handler = lambda q, p: junk(q)
    with Running(corefile(up)) as srv:  # default timeouts: 2 s per attempt, 5 s per query
        t0 = time.monotonic()
        r = srv.query("g.test.")
        took = time.monotonic() - t0
    assert r.rcode() == dns.rcode.SERVFAIL
    assert took < 1.0
    assert asked(up, "g.test.") == 2


def test_garbage_first_upstream_fails_over_to_second(up: FakeUpstream, up2: FakeUpstream) -> None:
    up.handler = lambda q, p: Garbage() if q.question[0].name.to_text() == "g.test." else None
    with Running(corefile(up, up2, opts="policy sequential")) as srv:
        r = srv.query("g.test.")
    assert r.rcode() == dns.rcode.NOERROR
    assert (asked(up, "g.test."), asked(up2, "g.test.")) == (1, 1)


def test_fresh_random_id_and_source_ports(up: FakeUpstream, monkeypatch: Any) -> None:
    monkeypatch.setattr(fwd_udp, "MAX_USES", 2)
    with Running(corefile(up)) as srv:
        client_ids = [srv.query(f"n{i}.test.").id for i in range(12)]
    ids = [r.id for r in up.queries]
    ports = {p[1] for p in up.peers}
    assert len(ids) == 12 and len(set(ids)) >= 10  # random: a collision is possible
    assert sum(a == b for a, b in zip(ids, client_ids, strict=True)) <= 1  # not the client's
    assert len(ports) >= 5  # 8 sockets: at most 2 queries per source port here


def test_servfail_reports_coredns_like_error(up: FakeUpstream,
                                             caplog: pytest.LogCaptureFixture) -> None:
    up.handler = lambda q, p: Drop()
    with Running(corefile(up, opts=FAST, extra=" errors\n")) as srv:
        r = srv.query("slow.test.")
    assert r.rcode() == dns.rcode.SERVFAIL
    msgs = [rec.getMessage() for rec in caplog.records if rec.name == "linkdns.plugin.errors"]
    assert any("SLOW.TEST." in m.upper() and "i/o timeout" in m and
               f"->{up.addr}" in m and "read udp 127.0.0.1:" in m for m in msgs), msgs


# -- TCP connection reuse ---------------------------------------------------------------------


def test_tcp_connections_are_reused(up: FakeUpstream) -> None:
    with Running(corefile(up, opts="force_tcp")) as srv:
        for i in range(3):
            assert srv.query(f"r{i}.test.").rcode() == dns.rcode.NOERROR
        labels = {"proxy_name": "forward", "to": up.addr, "proto": "tcp"}
        assert sample(srv, "coredns_proxy_conn_cache_misses_total", **labels) == 1
        assert sample(srv, "coredns_proxy_conn_cache_hits_total", **labels) == 2
    assert up.tcp_connections_accepted == 1


def test_reused_connection_closed_by_upstream_is_retried_on_a_fresh_one(
        up: FakeUpstream) -> None:
    with Running(corefile(up, opts="force_tcp")) as srv:
        assert srv.query("a.test.").rcode() == dns.rcode.NOERROR
        up.handler = sequence(CloseTCP())  # closes the reused connection without answering
        r = srv.query("b.test.")
    assert r.rcode() == dns.rcode.NOERROR and rrs(r) == 1
    assert up.tcp_connections_accepted == 2


def test_upstream_closing_idle_connections_is_harmless() -> None:
    with FakeUpstream(close_tcp_after_each=True) as up, \
            Running(corefile(up, opts="force_tcp")) as srv:
        for i in range(3):
            assert srv.query(f"c{i}.test.").rcode() == dns.rcode.NOERROR
        assert up.tcp_connections_accepted == 3


def test_idle_tcp_connections_expire(up: FakeUpstream) -> None:
    with Running(corefile(up, opts="force_tcp\nexpire 5s")) as srv:
        srv.query("e1.test.")
        srv.server.clock.advance(6)
        srv.query("e2.test.")
        srv.query("e3.test.")
    assert up.tcp_connections_accepted == 2


# -- the query sent upstream (byte patching) --------------------------------------------------


def _forward(opts: str = "") -> Forward:
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from linkdns.clock import Clock
    from linkdns.corefile import parse_corefile
    from linkdns.plugins.forward import parse

    block = f" {{\n{opts}\n}}" if opts else ""
    d = parse_corefile(f". {{\nforward . 127.0.0.1{block}\n}}\n")[0].directives[0]
    env = SimpleNamespace(registry=CollectorRegistry(), clock=Clock(),
                          keep=lambda key, make: make())
    return Forward(parse(d), env)  # type: ignore[arg-type]


def _scan(data: bytes) -> Any:
    from linkdns import wire

    st, q = wire.scan_query(data)
    assert st == 0 and q is not None
    return q


@pytest.mark.parametrize(("opts", "kw", "want"), [
    pytest.param("", {"use_edns": 0, "payload": 3000}, 3000, id="as-is"),
    pytest.param("", {}, None, id="as-is-no-opt"),
    pytest.param("bufsize 1232", {"use_edns": 0, "payload": 4096}, 1232, id="replaced"),
    pytest.param("bufsize 1232", {"use_edns": 0, "payload": 600}, 1232, id="raised"),
    pytest.param("bufsize 1232", {}, 1232, id="added"),
])
def test_prepared_query_carries_the_right_edns_size(opts: str, kw: dict[str, Any],
                                                    want: int | None) -> None:
    client = dns.message.make_query("Www.Example.org.", "A", want_dnssec=bool(kw), **kw)
    sent = dns.message.from_wire(_forward(opts).prepare(_scan(client.to_wire())))
    assert (sent.payload if sent.edns >= 0 else None) == want
    assert sent.question == client.question and sent.flags == client.flags
    assert bool(sent.ednsflags & dns.flags.DO) == bool(kw)


def test_added_opt_goes_before_another_additional_record() -> None:
    from linkdns import wire

    q = dns.message.make_query("a.test.", "A")
    q.additional.append(dns.rrset.from_text("a.test.", 0, "IN", "A", "192.0.2.1"))
    out = _forward("bufsize 1400").prepare(_scan(q.to_wire()))
    _, records = replies.walk(out)
    assert [r.rtype for r in records] == [wire.T_OPT, wire.T_A]
