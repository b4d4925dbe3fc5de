"""acl: allow / block / filter / drop by client address and query type, CoreDNS's way.

Every query comes from 127.0.0.1, so the rules below match or miss that address on purpose
(127.0.0.1/32, 127.0.0.0/8, *, versus 10.0.0.0/8 and ::1).
"""

from __future__ import annotations

import logging
import socket
import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import prometheus_client
import pytest
from fakeupstream import FakeUpstream
from harness import Running
from test_metrics import parse as parse_metrics

from linkdns import plugin, wire
from linkdns.config import build_sites
from linkdns.corefile import parse_corefile
from linkdns.errors import ConfigError
from linkdns.plugins import acl
from linkdns.request import Request
from linkdns.writer import Recorder

ANSWER = "192.0.2.1"  # what FakeUpstream answers for any A query
DROP_WAIT = 0.5  # how long a client waits to see that a dropped query gets no reply


def corefile(up: FakeUpstream, acl_lines: str, extra: str = "") -> str:
    return (f".:0 {{\n bind 127.0.0.1\n{extra}{acl_lines}\n forward . {up.addr}\n}}\n")


def acl_block(*policies: str, zones: str = "") -> str:
    body = "\n".join(f"   {p}" for p in policies)
    return f" acl {zones} {{\n{body}\n }}"


def outcome(r: dns.message.Message) -> str:
    """'answer', 'refused' or 'filtered' for a reply."""
    if r.rcode() == dns.rcode.REFUSED:
        assert not r.answer
        return "refused"
    assert r.rcode() == dns.rcode.NOERROR
    if not r.answer:
        return "filtered"
    assert r.answer[0][0].address == ANSWER
    return "answer"


def exposition(srv: Running) -> str:
    """The registry's text, rendered on the server's loop: a query's counters are updated
    just after its reply is sent, so a scrape from this thread could run in between."""

    async def render() -> str:
        return prometheus_client.generate_latest(srv.registry).decode()

    return srv.call(render())


def acl_counts(srv: Running) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {k: v for k, v in parse_metrics(exposition(srv)).items()
            if k[0].startswith("coredns_acl_")}


def server_label(srv: Running) -> str:
    return f"dns://127.0.0.1:{srv.port}"


# -- each action, each kind of source ---------------------------------------------------------


@pytest.mark.parametrize(("policy", "want", "upstream"), [
    pytest.param("block net 127.0.0.1/32", "refused", 0, id="block-host-cidr"),
    pytest.param("block net 127.0.0.1", "refused", 0, id="block-bare-address"),
    pytest.param("block net 127.0.0.0/8", "refused", 0, id="block-loopback-net"),
    pytest.param("block net 127.9.9.9/8", "refused", 0, id="block-host-bits-ignored"),
    pytest.param("block net *", "refused", 0, id="block-any-source"),
    pytest.param("block", "refused", 0, id="block-bare-action"),
    pytest.param("block net 10.0.0.0/8", "answer", 1, id="block-other-net-allows"),
    pytest.param("block net ::1", "answer", 1, id="block-ipv6-does-not-match-ipv4"),
    pytest.param("block net 10.0.0.0/8 127.0.0.1", "refused", 0, id="block-second-net"),
    pytest.param("filter net 127.0.0.1/32", "filtered", 0, id="filter-host"),
    pytest.param("filter", "filtered", 0, id="filter-bare-action"),
    pytest.param("allow net 127.0.0.1", "answer", 1, id="allow-host"),
    pytest.param("BLOCK NET 127.0.0.1", "refused", 0, id="keywords-any-case"),
])
def test_action_by_source(up: FakeUpstream, policy: str, want: str, upstream: int) -> None:
    with Running(corefile(up, acl_block(policy))) as srv:
        for tcp in (False, True):
            assert outcome(srv.query("www.example.org.", "A", tcp=tcp)) == want
    assert up.count() == upstream * 2


@pytest.mark.parametrize(("policy", "code"), [
    pytest.param("block", dns.edns.EDECode.BLOCKED, id="block-ede-blocked"),
    pytest.param("filter", dns.edns.EDECode.FILTERED, id="filter-ede-filtered"),
])
def test_reply_is_coredns_setrcode_with_ede_for_edns_clients(
        up: FakeUpstream, policy: str, code: dns.edns.EDECode) -> None:
    with Running(corefile(up, acl_block(policy))) as srv:
        r = srv.query("WwW.Example.ORG.", "A", use_edns=0, payload=1400, want_dnssec=True)
        plain = srv.query("www.example.org.", "A")
    assert [e.code for e in r.extended_errors()] == [code]
    assert r.extended_errors()[0].text is None
    assert r.payload == 1400 and r.ednsflags & dns.flags.DO
    assert str(r.question[0].name) == "WwW.Example.ORG."  # the client's question, as sent
    # miekg's SetRcode: QR, RD copied, no RA, no AA; no records at all.
    for m in (r, plain):
        assert m.flags & dns.flags.QR and m.flags & dns.flags.RD
        assert not m.flags & (dns.flags.RA | dns.flags.AA)
        assert not (m.answer or m.authority)
    # A client that sent no OPT gets none back (RFC 6891 §7), hence no EDE.
    assert plain.edns == -1 and not plain.additional
    assert up.count() == 0


# -- query types -------------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "blocked", "allowed"), [
    pytest.param("block type AAAA MX", ["AAAA", "MX"], ["A", "TXT"], id="listed-types"),
    pytest.param("block type AAAA net 127.0.0.0/8", ["AAAA"], ["A"], id="type-and-net"),
    pytest.param("block type AAAA net 10.0.0.0/8", [], ["A", "AAAA"], id="type-match-net-miss"),
    pytest.param("block net 127.0.0.1 type TXT", ["TXT"], ["A"], id="net-before-type"),
    pytest.param("block type * net 127.0.0.1", ["A", "AAAA", "MX"], [], id="any-type"),
    pytest.param("block type ANY", ["ANY"], ["A"], id="ANY-is-a-type-not-a-wildcard"),
])
def test_type_filters(up: FakeUpstream, policy: str, blocked: list[str],
                      allowed: list[str]) -> None:
    with Running(corefile(up, acl_block(policy))) as srv:
        for t in blocked:
            assert srv.query("t.example.org.", t).rcode() == dns.rcode.REFUSED, t
        for t in allowed:
            assert srv.query("t.example.org.", t).rcode() == dns.rcode.NOERROR, t
    assert up.count() == len(allowed)


# -- zones ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "want"), [
    pytest.param("sub.example.org.", "refused", id="zone-apex"),
    pytest.param("a.b.SUB.example.org.", "refused", id="below-zone-any-case"),
    pytest.param("example.org.", "answer", id="parent-not-in-zone"),
    pytest.param("xsub.example.org.", "answer", id="label-boundary"),
    pytest.param("www.example.net.", "answer", id="other-zone"),
])
def test_zones_scope_a_rule(up: FakeUpstream, name: str, want: str) -> None:
    with Running(corefile(up, acl_block("block", zones="Sub.Example.Org"))) as srv:
        assert outcome(srv.query(name, "A")) == want


def test_default_zones_are_the_blocks_and_blocks_share_the_counters(up: FakeUpstream) -> None:
    cf = (f"example.org:0 {{\n bind 127.0.0.1\n acl {{\n  block\n }}\n forward . {up.addr}\n}}\n"
          f".:0 {{\n bind 127.0.0.1\n acl {{\n  filter type MX\n }}\n forward . {up.addr}\n}}\n")
    with Running(cf) as srv:
        assert outcome(srv.query("www.example.org.", "A")) == "refused"
        assert outcome(srv.query("www.example.net.", "A")) == "answer"
        assert outcome(srv.query("www.example.net.", "MX")) == "filtered"
        sv = server_label(srv)
        assert acl_counts(srv) == {
            ("coredns_acl_blocked_requests_total",
             frozenset({("server", sv), ("zone", "example.org."), ("view", "")})): 1.0,
            ("coredns_acl_filtered_requests_total",
             frozenset({("server", sv), ("zone", "."), ("view", "")})): 1.0,
            ("coredns_acl_allowed_requests_total",
             frozenset({("server", sv), ("view", "")})): 1.0,
        }


# -- order: first match wins, allow ends the checks ---------------------------------------------


@pytest.mark.parametrize(("acls", "want"), [
    pytest.param([("allow net 127.0.0.1", "block")], "answer", id="allow-then-block"),
    pytest.param([("block net 127.0.0.0/8", "allow net 127.0.0.1")], "refused",
                 id="block-then-allow"),
    pytest.param([("filter type A", "block")], "filtered", id="filter-then-block"),
    pytest.param([("block net 10.0.0.0/8", "filter net 127.0.0.0/8", "block")], "filtered",
                 id="miss-then-match"),
    pytest.param([("allow net 127.0.0.1",), ("block",)], "answer",
                 id="allow-in-first-acl-skips-second-acl"),
    pytest.param([("block net 10.0.0.0/8",), ("filter",)], "filtered",
                 id="no-match-in-first-acl-tries-second"),
    pytest.param([("allow net 10.0.0.0/8",)], "answer", id="default-allow"),
])
def test_rules_in_order_first_match_wins(up: FakeUpstream, acls: list[tuple[str, ...]],
                                         want: str) -> None:
    lines = "\n".join(acl_block(*ps) for ps in acls)
    with Running(corefile(up, lines)) as srv:
        assert outcome(srv.query("www.example.org.", "A")) == want


def test_rule_of_another_zone_is_skipped(up: FakeUpstream) -> None:
    lines = acl_block("allow", zones="example.net") + "\n" + acl_block("block")
    with Running(corefile(up, lines)) as srv:
        assert outcome(srv.query("www.example.org.", "A")) == "refused"
        assert outcome(srv.query("www.example.net.", "A")) == "answer"


# -- drop ------------------------------------------------------------------------------------------


def test_drop_sends_nothing_and_is_counted(up: FakeUpstream,
                                           caplog: pytest.LogCaptureFixture) -> None:
    cf = corefile(up, acl_block("drop type TXT"), extra=" errors\n log\n prometheus 127.0.0.1:0\n")
    with caplog.at_level(logging.INFO), Running(cf) as srv:
        with pytest.raises(dns.exception.Timeout):
            srv.query("www.example.org.", "TXT", timeout=DROP_WAIT)
        assert outcome(srv.query("www.example.org.", "A")) == "answer"
        samples = parse_metrics(exposition(srv))
    sv = server_label(srv)
    zone = [("server", sv), ("zone", "."), ("view", "")]
    assert samples[("coredns_acl_dropped_requests_total", frozenset(zone))] == 1
    # Two requests, one response: nothing was sent for the dropped one (no SERVFAIL either).
    reqs = {k: v for k, v in samples.items() if k[0] == "coredns_dns_requests_total"}
    resps = {k: v for k, v in samples.items() if k[0] == "coredns_dns_responses_total"}
    assert sum(reqs.values()) == 2
    assert resps == {("coredns_dns_responses_total",
                      frozenset([*zone, ("rcode", "NOERROR"), ("plugin", "forward")])): 1}
    assert up.count() == 1
    # the log line of the dropped query names no rcode (CoreDNS: "-"), not "-1"
    (line,) = [r.getMessage() for r in caplog.records if '"TXT IN www.example.org.' in r.getMessage()]
    assert '" - ' in line and "-1" not in line


def _tcp_send(sock: socket.socket, *msgs: dns.message.Message) -> None:
    """Pipeline ``msgs`` in one write (queries run in the order they arrive)."""
    out = b""
    for m in msgs:
        data = m.to_wire()
        out += struct.pack(">H", len(data)) + data
    sock.sendall(out)


def _tcp_read(sock: socket.socket) -> dns.message.Message:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            assert chunk, "connection closed"
            buf += chunk
        return buf
    (n,) = struct.unpack(">H", exactly(2))
    return dns.message.from_wire(exactly(n))


def test_drop_over_tcp_keeps_the_connection_usable(up: FakeUpstream) -> None:
    """Each dropped query ends (the connection's in-flight count goes back down): more drops
    than the per-connection pipelining limit still leave later queries answered."""
    n = 101  # listen.TCP_MAX_PENDING + 1
    with Running(corefile(up, acl_block("drop type TXT", "filter type MX"))) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=3) as sock:
        for i in range(n):
            dropped = dns.message.make_query("d.example.org.", "TXT", id=2 * i)
            answered = dns.message.make_query("f.example.org.", "MX", id=2 * i + 1)
            _tcp_send(sock, dropped, answered)
            r = _tcp_read(sock)
            assert (r.id, r.rcode()) == (2 * i + 1, dns.rcode.NOERROR)
        sock.settimeout(DROP_WAIT)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # nothing was ever sent for the dropped ones
        counts = acl_counts(srv)
    key = frozenset({("server", server_label(srv)), ("zone", "."), ("view", "")})
    assert counts[("coredns_acl_dropped_requests_total", key)] == n
    assert counts[("coredns_acl_filtered_requests_total", key)] == n


# -- the cache -------------------------------------------------------------------------------------


def test_blocked_client_gets_no_cached_answer(up: FakeUpstream) -> None:
    cf = corefile(up, acl_block("block type A net 127.0.0.0/8"), extra=" cache 300\n")
    with Running(cf) as srv:
        site = srv.server.sites[0]
        assert site.fast is False and site.cache is None  # the hit path is off in front of acl
        handler = next(h for h in site.handlers if h.name == "acl")
        assert handler.next is not None and handler.next.name == "cache"
        data = wire.make_query(wire.text_to_name("www.example.org."), wire.T_A, 7)
        _, q = wire.scan_query(data)
        assert q is not None

        async def through_cache() -> bytes | None:
            # What an allowed client gets: the chain after acl, i.e. the cache.
            req = Request(q.copy(), ("192.0.2.99", 5353), "udp", server_label(srv))
            rec = Recorder(req)
            assert handler.next is not None
            await handler.next.serve(req, rec)
            return rec.reply

        for _ in range(2):
            got = srv.call(through_cache())
            assert got is not None and dns.message.from_wire(got).answer
        assert up.count() == 1  # the second one was a cache hit: the answer is in the cache
        for tcp in (False, True):
            assert outcome(srv.query("www.example.org.", "A", tcp=tcp)) == "refused"
    assert up.count() == 1


def test_allowed_clients_still_get_cache_hits(up: FakeUpstream) -> None:
    cf = corefile(up, acl_block("block net 10.0.0.0/8"), extra=" cache 300\n")
    with Running(cf) as srv:
        for _ in range(3):
            assert outcome(srv.query("www.example.org.", "A")) == "answer"
    assert up.count() == 1


# -- metrics ---------------------------------------------------------------------------------------


def test_metrics_count_each_action_with_coredns_labels(up: FakeUpstream) -> None:
    lines = (acl_block("block type AAAA", "filter type MX", "drop type TXT", zones="example.org")
             + "\n" + acl_block("allow type SRV", "block type SRV"))
    with Running(corefile(up, lines, extra=" prometheus 127.0.0.1:0\n")) as srv:
        for name, t in [("a.example.org.", "AAAA"), ("b.example.org.", "AAAA"),
                        ("a.example.org.", "MX"), ("a.example.org.", "A"),
                        ("a.example.net.", "AAAA"), ("a.example.net.", "SRV")]:
            srv.query(name, t)
        with pytest.raises(dns.exception.Timeout):
            srv.query("a.example.org.", "TXT", timeout=DROP_WAIT)
        counts = acl_counts(srv)
    sv = server_label(srv)

    def zl(zone: str) -> frozenset[tuple[str, str]]:
        return frozenset({("server", sv), ("zone", zone), ("view", "")})

    assert counts == {
        ("coredns_acl_blocked_requests_total", zl("example.org.")): 2,
        ("coredns_acl_filtered_requests_total", zl("example.org.")): 1,
        ("coredns_acl_dropped_requests_total", zl("example.org.")): 1,
        ("coredns_acl_allowed_requests_total", frozenset({("server", sv), ("view", "")})): 3,
    }


def test_longest_matching_zone_labels_the_counter(up: FakeUpstream) -> None:
    with Running(corefile(up, acl_block("block", zones="example.org sub.example.org"))) as srv:
        srv.query("x.sub.example.org.", "A")
        counts = acl_counts(srv)
    key = frozenset({("server", server_label(srv)), ("zone", "sub.example.org."), ("view", "")})
    assert counts == {("coredns_acl_blocked_requests_total", key): 1}


# -- parsing and configuration errors --------------------------------------------------------------


def parse_acl(text: str) -> list[acl.Rule]:
    sites = build_sites(parse_corefile(text))
    rules = sites[0].plugins["acl"]
    assert isinstance(rules, list)
    return rules


def test_parse_policies() -> None:
    rules = parse_acl(".:53 {\n acl Example.ORG 10.0.0.0/24 {\n  block type A AAAA net "
                      "192.168.0.0/16 ::1\n  filter type *\n  allow net *\n  drop\n }\n"
                      " acl\n}\n")
    assert [r.zones for r in rules] == [["example.org.", "0.0.10.in-addr.arpa."], None]
    block, filt, allow, drop = rules[0].policies
    assert block.action == "block" and block.qtypes == frozenset({1, 28})
    assert block.nets == ((4, 0xC0A80000, 0xFFFF0000), (6, 1, (1 << 128) - 1))
    assert (filt.action, filt.qtypes, filt.nets) == ("filter", None, None)
    assert (allow.action, allow.qtypes, allow.nets) == ("allow", None, None)
    assert (drop.action, drop.qtypes, drop.nets) == ("drop", None, None)
    assert rules[1].policies == []


@pytest.mark.parametrize(("line", "msg"), [
    pytest.param("blck type A", "unexpected token \"blck\"; expect 'allow', 'block', 'filter' "
                 "or 'drop'", id="unknown-action"),
    pytest.param("block net 192.168.0/16", 'illegal CIDR notation "192.168.0/16"', id="bad-cidr"),
    pytest.param("block net 192.168.0.0/33", 'illegal CIDR notation "192.168.0.0/33"',
                 id="mask-too-long"),
    pytest.param("block net 10.0.0.0/255.0.0.0", 'illegal CIDR notation "10.0.0.0/255.0.0.0"',
                 id="netmask-form"),
    pytest.param("block net 300.1.1.1", 'illegal CIDR notation "300.1.1.1/32"',
                 id="bad-address"),
    pytest.param("block net fe80::zz", 'illegal CIDR notation "fe80::zz/128"', id="bad-ipv6"),
    pytest.param("block type ABC", 'unexpected token "ABC"; expect legal QTYPE', id="bad-type"),
    pytest.param("block type a", 'unexpected token "a"; expect legal QTYPE',
                 id="type-names-are-uppercase"),
    pytest.param("block A net 10.0.0.0/8", "unexpected token \"a\"; expect 'type | net'",
                 id="missing-section"),
    pytest.param("block type net 10.0.0.0/8", 'no token specified in "type" section',
                 id="empty-section"),
    pytest.param("block file /etc/acl.txt", "unexpected token \"file\"; expect 'type | net'",
                 id="file-is-not-supported"),
])
def test_config_errors_name_file_and_line(line: str, msg: str) -> None:
    text = f".:53 {{\n acl {{\n  allow net 127.0.0.1\n  {line}\n }}\n}}\n"
    with pytest.raises(ConfigError) as e:
        build_sites(parse_corefile(text, "/etc/Corefile"))
    assert str(e.value) == f"/etc/Corefile:4 - plugin/acl: {msg}"


def test_bad_zone_is_an_error_with_its_line() -> None:
    with pytest.raises(ConfigError, match=r"^Corefile:2 - plugin/acl: .*bad CIDR"):
        build_sites(parse_corefile(".:53 {\n acl 10.0.0.0/99 {\n  block\n }\n}\n"))


# -- the client address ------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "want"), [
    pytest.param("127.0.0.1", (4, 0x7F000001), id="ipv4"),
    pytest.param("::ffff:127.0.0.1", (4, 0x7F000001), id="v4-mapped-is-ipv4"),
    pytest.param("::1", (6, 1), id="ipv6"),
    pytest.param("fe80::1%eth0", (6, (0xFE80 << 112) | 1), id="scope-stripped"),
    pytest.param("not-an-address", None, id="unreadable"),
])
def test_client_address(host: str, want: tuple[int, int] | None) -> None:
    assert acl.client_addr(host) == want


def test_unreadable_source_is_blocked_as_coredns_does() -> None:
    h = acl.Acl([((".",), (acl.Policy("allow"),))], acl.AclCounts())
    _, q = wire.scan_query(wire.make_query(wire.text_to_name("x.org."), wire.T_A, 1))
    assert q is not None
    assert h.action(Request(q, ("garbage", 1), "udp")) == ("block", ".")
    assert h.action(Request(q, ("127.0.0.1", 1), "udp")) == ("allow", "")


def test_drop_is_not_an_error_rcode() -> None:
    # The handlers before acl (errors, log) see a dropped query as answered, not as an error
    # they should answer themselves.
    assert plugin.client_wrote(plugin.DROPPED)
