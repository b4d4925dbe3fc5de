"""bufsize: parse, the hit-path hook, and the slow path (OPT lowered upstream and for the
client's reply size)."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import pytest
from fakeupstream import FakeUpstream, a_records
from harness import Running

from linkdns import wire
from linkdns.config import build_sites
from linkdns.corefile import parse_corefile
from linkdns.errors import ConfigError
from linkdns.plugins import bufsize


def scanned(**kw: object) -> wire.Query:
    msg = dns.message.make_query("www.example.org.", "A", **kw)  # type: ignore[arg-type]
    st, q = wire.scan_query(msg.to_wire())
    assert st == 0 and q is not None
    return q


def corefile(up: FakeUpstream, arg: str = "", fwd_opts: str = "") -> str:
    block = f" {{\n  {fwd_opts}\n }}" if fwd_opts else ""
    return f". {{\n bind 127.0.0.1\n bufsize {arg}\n forward . {up.addr}{block}\n}}\n"


@pytest.mark.parametrize(("line", "size"), [
    pytest.param("bufsize", 1232, id="default"),
    pytest.param("bufsize 512", 512, id="min"),
    pytest.param("bufsize 4096", 4096, id="max"),
    pytest.param("bufsize 1400", 1400, id="value"),
])
def test_parse(line: str, size: int) -> None:
    sites = build_sites(parse_corefile(f". {{\n{line}\n}}\n", "Corefile"))
    assert sites[0].plugins["bufsize"] == size


@pytest.mark.parametrize("line", [
    pytest.param("bufsize 511", id="too-small"),
    pytest.param("bufsize 4097", id="too-big"),
    pytest.param("bufsize big", id="not-a-number"),
    pytest.param("bufsize 1232 1400", id="two-args"),
    pytest.param("bufsize {\n  1232\n}", id="block"),
])
def test_parse_errors_name_file_and_line(line: str) -> None:
    with pytest.raises(ConfigError) as ei:
        build_sites(parse_corefile(f". {{\n\n{line}\n}}\n", "Corefile"))
    assert (ei.value.file, ei.value.line, ei.value.plugin) == ("Corefile", 3, "bufsize")


@pytest.mark.parametrize(("size", "want"), [
    pytest.param(4096, 1232, id="lowered"),
    pytest.param(1000, 1000, id="smaller-kept"),
    pytest.param(512, 512, id="no-edns"),
])
def test_hit_size(size: int, want: int) -> None:
    h = bufsize.Bufsize(1232)
    assert h.hit_transparent
    assert h.hit_size(size) == want


def test_lower_rewrites_the_opt_and_udp_size() -> None:
    q = scanned(use_edns=0, payload=4096, want_dnssec=True)
    bufsize.lower(q, 1232)
    assert q.udp_size == 1232
    m = dns.message.from_wire(q.data)
    assert m.payload == 1232 and m.ednsflags & dns.flags.DO


@pytest.mark.parametrize("kw", [
    pytest.param({}, id="no-opt"),
    pytest.param({"use_edns": 0, "payload": 800}, id="smaller"),
])
def test_lower_leaves_other_queries_alone(kw: dict[str, object]) -> None:
    q = scanned(**kw)
    before = (q.data, q.udp_size)
    bufsize.lower(q, 1232)
    assert (q.data, q.udp_size) == before


def test_slow_path_lowers_what_goes_upstream(up: FakeUpstream) -> None:
    with Running(corefile(up, "1000")) as srv:
        srv.query("a.test.", use_edns=0, payload=4096)
        srv.query("b.test.", use_edns=0, payload=700)
        srv.query("c.test.")
    assert [(r.has_edns, r.edns_payload) for r in up.queries] == [
        (True, 1000), (True, 700), (False, None)]


def test_reply_is_truncated_to_the_lowered_size(up: FakeUpstream) -> None:
    up.handler = lambda q, p: a_records(q, 40)  # ~670 bytes compressed
    with Running(corefile(up, "600")) as srv:
        r = srv.query("big.test.", use_edns=0, payload=4096)
        full = srv.query("big.test.", use_edns=0, payload=4096, tcp=True)
    assert r.flags & dns.flags.TC and r.payload == 600
    assert not full.flags & dns.flags.TC and sum(len(x) for x in full.answer) == 40


def test_forward_bufsize_option_wins_upstream(up: FakeUpstream) -> None:
    with Running(corefile(up, "1000", "bufsize 1400")) as srv:
        assert srv.query("a.test.", use_edns=0, payload=4096).rcode() == dns.rcode.NOERROR
    assert up.queries[0].edns_payload == 1400


def test_cache_hits_honour_the_lowered_size(up: FakeUpstream) -> None:
    up.handler = lambda q, p: a_records(q, 40 if q.question[0].name.to_text() == "big.test."
                                        else 1)
    cf = f". {{\n bind 127.0.0.1\n bufsize 600\n cache 30\n forward . {up.addr}\n}}\n"
    with Running(cf) as srv:
        site = srv.server.sites[0]
        assert [h.name for h in site.pre_hit] == ["bufsize"]  # on the hit path
        first = srv.query("big.test.", use_edns=0, payload=4096)
        second = srv.query("big.test.", use_edns=0, payload=4096)
        small = srv.query("small.test.", use_edns=0, payload=4096)
        small_hit = srv.query("small.test.", use_edns=0, payload=4096)
        ln = next(iter(srv.server.listeners.values()))
        zs = srv.server.stats.zone(ln.name, ".")

        def cache_answers() -> int:
            zs.fold()  # (the hit path's ledger into the counters, on the loop)
            return zs.responses.get((0, "cache"), 0)

        before = srv.run(cache_answers)
        tcp_hit = srv.query("big.test.", use_edns=0, payload=4096, tcp=True)
        assert srv.run(cache_answers) == before + 1  # answered from cache, whole
    assert not tcp_hit.flags & dns.flags.TC and sum(len(x) for x in tcp_hit.answer) == 40
    assert first.flags & dns.flags.TC and second.flags & dns.flags.TC
    assert not small_hit.flags & dns.flags.TC and small_hit.answer == small.answer
    assert [r.qname for r in up.queries] == ["big.test.", "small.test."]
