"""hosts over real sockets: dnspython client -> linkdns (cache? -> hosts -> forward) -> FakeUpstream.

Reload waits poll the server with a deadline; cache ageing moves the server's clock.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
from fakeupstream import FakeUpstream
from harness import Running, raw

from linkdns.config import build_sites
from linkdns.corefile import parse_corefile
from linkdns.errors import ConfigError
from linkdns.plugins.hosts.handler import Hosts
from linkdns.plugins.hosts.setup import HostsConfig

HOSTS = """\
# a comment line
192.0.2.10   Canonical.Example.ORG  alias1  Alias2.example.org   # trailing comment
192.0.2.11   two.example.org
2001:db8::1  six.example.org
::ffff:192.0.2.7  mapped.example.org
fe80::1%eth0  scoped.example.org
10.0.0.300   bad.example.org
192.0.2.12
not-an-ip    junk.example.org
"""


def corefile(hosts: str, up: FakeUpstream, before: str = "") -> str:
    """A ``.`` block: [before] hosts [...] then forward to ``up``."""
    return (f".:0 {{\n bind 127.0.0.1\n{before}\n {hosts}\n forward . {up.addr}\n}}\n")


def hosts_line(path: Path | str, body: str = "", args: str = "") -> str:
    return f"hosts {path} {args} {{\n{body}\n }}" if body else f"hosts {path} {args}"


def handler(srv: Running) -> Hosts:
    return next(h for h in srv.server.sites[0].handlers if isinstance(h, Hosts))


def addrs(r: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in r.answer for rd in rrset]


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def total(srv: Running, name: str) -> float:
    """Sum of every sample called ``name`` (any labels)."""
    return sum(s.value for m in srv.registry.collect() for s in m.samples if s.name == name)


def write(path: Path, text: str, mtime: float | None = None) -> None:
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@pytest.fixture
def hostsfile(tmp_path: Path) -> Path:
    p = tmp_path / "hosts"
    p.write_text(HOSTS)
    return p


# -- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [pytest.param(False, id="udp"), pytest.param(True, id="tcp")])
def test_file_then_inline_addresses_authoritative(hostsfile: Path, up: FakeUpstream,
                                                  tcp: bool) -> None:
    inline = "  192.0.2.20 two.example.org\n  192.0.2.11 Two.Example.Org"
    with Running(corefile(hosts_line(hostsfile, inline), up)) as srv:
        r = srv.query("two.example.org.", "A", tcp=tcp)
        wire = raw(srv.port, dns.message.make_query("two.example.org.", "A").to_wire())
    assert wire is not None and wire[6:8] == b"\x00\x02"  # ANCOUNT: the repeat is dropped
    assert r.rcode() == dns.rcode.NOERROR
    assert addrs(r) == ["192.0.2.11", "192.0.2.20"]  # file first, inline after, no repeat
    assert r.flags & dns.flags.AA and r.flags & dns.flags.RA and r.flags & dns.flags.RD
    assert r.answer[0].ttl == 3600
    assert up.count() == 0


@pytest.mark.parametrize("qname", [
    pytest.param("canonical.example.org.", id="canonical"),
    pytest.param("alias1.", id="short-alias"),
    pytest.param("alias2.example.org.", id="alias-lowercased"),
    pytest.param("CaNoNiCaL.eXaMpLe.OrG.", id="query-mixed-case"),
])
def test_names_and_aliases_case_insensitive(hostsfile: Path, up: FakeUpstream,
                                            qname: str) -> None:
    with Running(corefile(hosts_line(hostsfile), up)) as srv:
        r = srv.query(qname, "A")
    assert addrs(r) == ["192.0.2.10"]
    assert r.answer[0].name.to_text() == qname  # owner points at the question as asked


@pytest.mark.parametrize("qname", [
    pytest.param("bad.example.org.", id="bad-address"),
    pytest.param("junk.example.org.", id="not-an-address"),
    pytest.param("nothere.example.org.", id="unknown"),
])
def test_unknown_name_without_fallthrough_is_servfail(hostsfile: Path, up: FakeUpstream,
                                                     qname: str) -> None:
    with Running(corefile(hosts_line(hostsfile), up)) as srv:
        r = srv.query(qname, "A")
    assert r.rcode() == dns.rcode.SERVFAIL
    assert up.count() == 0


@pytest.mark.parametrize(("qname", "qtype", "want"), [
    pytest.param("six.example.org.", "AAAA", ["2001:db8::1"], id="aaaa"),
    pytest.param("mapped.example.org.", "A", ["192.0.2.7"], id="ipv4-mapped-is-a"),
    pytest.param("mapped.example.org.", "AAAA", [], id="ipv4-mapped-no-aaaa"),
    pytest.param("scoped.example.org.", "AAAA", ["fe80::1"], id="zone-index-dropped"),
    pytest.param("six.example.org.", "A", [], id="nodata-other-family"),
    pytest.param("two.example.org.", "TXT", [], id="nodata-other-type"),
    pytest.param("two.example.org.", "MX", [], id="nodata-mx"),
])
def test_families_and_nodata(hostsfile: Path, up: FakeUpstream, qname: str, qtype: str,
                             want: list[str]) -> None:
    with Running(corefile(hosts_line(hostsfile, "  fallthrough"), up)) as srv:
        r = srv.query(qname, qtype)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA
    assert addrs(r) == want
    assert not r.authority  # no SOA: hosts has none
    assert up.count() == 0  # NODATA never falls through


@pytest.mark.parametrize(("addr", "want"), [
    pytest.param("192.0.2.10", ["canonical.example.org.", "alias1.", "alias2.example.org."],
                 id="ipv4-all-names"),
    pytest.param("2001:db8::1", ["six.example.org."], id="ipv6"),
    pytest.param("192.0.2.7", ["mapped.example.org."], id="ipv4-mapped-in-addr"),
    pytest.param("::ffff:192.0.2.7", ["mapped.example.org."], id="ipv4-mapped-ip6-arpa"),
])
def test_ptr_generated(hostsfile: Path, up: FakeUpstream, addr: str, want: list[str]) -> None:
    with Running(corefile(hosts_line(hostsfile, "  ttl 60"), up)) as srv:
        r = srv.query(dns.reversename.from_address(addr).to_text(), "PTR")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert addrs(r) == want
    assert r.answer[0].ttl == 60
    assert up.count() == 0


@pytest.mark.parametrize("body", [
    pytest.param("", id="unknown-address"),
    pytest.param("  no_reverse", id="no_reverse"),
])
def test_ptr_without_names_goes_to_next_plugin(hostsfile: Path, up: FakeUpstream,
                                               body: str) -> None:
    addr = "192.0.2.99" if not body else "192.0.2.10"
    with Running(corefile(hosts_line(hostsfile, body), up)) as srv:
        srv.query(dns.reversename.from_address(addr).to_text(), "PTR")
    assert [(q.qname, q.qtype) for q in up.queries] == [
        (dns.reversename.from_address(addr).to_text(), "PTR")]


def test_ttl_option_applies_to_addresses(hostsfile: Path, up: FakeUpstream) -> None:
    with Running(corefile(hosts_line(hostsfile, "  ttl 42"), up)) as srv:
        assert srv.query("two.example.org.", "A").answer[0].ttl == 42
        assert srv.query("six.example.org.", "AAAA").answer[0].ttl == 42


# -- zones and fallthrough -------------------------------------------------------------------


@pytest.mark.parametrize(("fall", "qname", "upstream"), [
    pytest.param("fallthrough", "nothere.example.org.", True, id="all-zones"),
    pytest.param("fallthrough a.example.org", "x.a.example.org.", True, id="listed-zone"),
    pytest.param("fallthrough a.example.org", "x.b.example.org.", False, id="other-zone"),
])
def test_fallthrough(hostsfile: Path, up: FakeUpstream, fall: str, qname: str,
                     upstream: bool) -> None:
    with Running(corefile(hosts_line(hostsfile, "  " + fall), up)) as srv:
        r = srv.query(qname, "A")
    if upstream:
        assert addrs(r) == ["192.0.2.1"]  # FakeUpstream's default answer
        assert [q.qname for q in up.queries] == [qname]
    else:
        assert r.rcode() == dns.rcode.SERVFAIL
        assert up.count() == 0


def test_names_outside_zones_go_to_next_plugin(tmp_path: Path, up: FakeUpstream) -> None:
    f = tmp_path / "hosts"
    f.write_text("10.0.0.5 x.example.net\n10.0.0.6 y.example.org\n")
    with Running(corefile(hosts_line(f, args="example.org"), up)) as srv:
        assert addrs(srv.query("y.example.org.", "A")) == ["10.0.0.6"]
        assert srv.query("none.example.org.", "A").rcode() == dns.rcode.SERVFAIL
        assert up.count() == 0
        # outside the zones: the entry was dropped and the query passes on
        assert addrs(srv.query("x.example.net.", "A")) == ["192.0.2.1"]
        # PTR queries need no zone listed: the reverse of an in-zone entry answers
        ptr = srv.query(dns.reversename.from_address("10.0.0.6").to_text(), "PTR")
        assert addrs(ptr) == ["y.example.org."]
        ptr = srv.query(dns.reversename.from_address("10.0.0.5").to_text(), "PTR")
    assert [q.qname for q in up.queries] == ["x.example.net.", "5.0.0.10.in-addr.arpa."]


# -- the cache in front ----------------------------------------------------------------------


def test_cache_stores_hosts_answers(tmp_path: Path, up: FakeUpstream) -> None:
    f = tmp_path / "hosts"
    write(f, "10.0.0.1 web.example.org\n", mtime=1_700_000_000)
    cf = corefile(hosts_line(f, "  reload 20ms"), up, before=" cache 30")
    with Running(cf) as srv:
        first = srv.query("web.example.org.", "A")
        assert addrs(first) == ["10.0.0.1"] and first.answer[0].ttl == 30  # cache's max TTL
        assert total(srv, "coredns_cache_hits_total") == 0
        assert addrs(srv.query("web.example.org.", "A")) == ["10.0.0.1"]
        assert total(srv, "coredns_cache_hits_total") == 1
        write(f, "10.0.0.2 web.example.org\n", mtime=1_700_000_100)
        assert wait_until(lambda: handler(srv).reloaded() == 1_700_000_100)
        assert addrs(srv.query("web.example.org.", "A")) == ["10.0.0.1"]  # still cached
        srv.server.clock.advance(31)
        assert addrs(srv.query("web.example.org.", "A")) == ["10.0.0.2"]
    # none of this test's names went upstream (a stray datagram from an earlier test's
    # forward, sent to a port this upstream now has, is not ours to count)
    assert [q.qname for q in up.queries if q.qname.endswith("example.org.")] == []


# -- reload ----------------------------------------------------------------------------------


def test_changed_file_is_reread(tmp_path: Path, up: FakeUpstream) -> None:
    f = tmp_path / "hosts"
    f.write_text("10.0.0.1 web.example.org\n")
    with Running(corefile(hosts_line(f, "  reload 20ms"), up)) as srv:
        assert addrs(srv.query("web.example.org.", "A")) == ["10.0.0.1"]
        f.write_text("10.0.0.2 web.example.org\n10.0.0.3 new.example.org\n")
        assert wait_until(lambda: addrs(srv.query("new.example.org.", "A")) == ["10.0.0.3"])
        assert addrs(srv.query("web.example.org.", "A")) == ["10.0.0.2"]
    # none of this test's names went upstream (a stray datagram from an earlier test's
    # forward, sent to a port this upstream now has, is not ours to count)
    assert [q.qname for q in up.queries if q.qname.endswith("example.org.")] == []


def test_missing_file_serves_inline_then_picks_up_the_file(
        tmp_path: Path, up: FakeUpstream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="linkdns")
    f = tmp_path / "hosts"
    cf = corefile(hosts_line(f, "  10.9.9.9 inline.example.org\n  reload 20ms"), up)
    with Running(cf) as srv:
        assert f"File does not exist: {f}" in caplog.text
        assert addrs(srv.query("inline.example.org.", "A")) == ["10.9.9.9"]
        assert srv.query("web.example.org.", "A").rcode() == dns.rcode.SERVFAIL
        f.write_text("10.0.0.1 web.example.org\n")
        assert wait_until(lambda: addrs(srv.query("web.example.org.", "A")) == ["10.0.0.1"])
        assert addrs(srv.query("inline.example.org.", "A")) == ["10.9.9.9"]


def test_deleted_file_keeps_last_entries_restored_file_is_read(tmp_path: Path,
                                                               up: FakeUpstream) -> None:
    f = tmp_path / "hosts"
    write(f, "10.0.0.1 web.example.org\n", mtime=1_700_000_000)
    with Running(corefile(hosts_line(f, "  10.9.9.9 inline.example.org\n  reload 10ms"),
                          up)) as srv:
        h = handler(srv)
        f.unlink()
        # the watcher runs every 10 ms: give it many turns, then check nothing was dropped
        time.sleep(0.2)
        assert addrs(srv.query("web.example.org.", "A")) == ["10.0.0.1"]
        assert addrs(srv.query("inline.example.org.", "A")) == ["10.9.9.9"]
        write(f, "10.0.0.2 web.example.org\n", mtime=1_700_000_200)
        assert wait_until(lambda: h.reloaded() == 1_700_000_200)
        assert addrs(srv.query("web.example.org.", "A")) == ["10.0.0.2"]


def test_watcher_is_owned_and_reload_zero_disables_it(hostsfile: Path,
                                                      up: FakeUpstream) -> None:
    with Running(corefile(hosts_line(hostsfile), up), drain=3.0) as srv:
        task = handler(srv)._task
        assert task is not None and not task.done()
        began = time.monotonic()
    assert task.done()
    assert time.monotonic() - began < 1.5  # the server did not wait on it as a query
    with Running(corefile(hosts_line(hostsfile, "  reload 0"), up)) as srv:
        assert handler(srv)._task is None
        assert addrs(srv.query("two.example.org.", "A")) == ["192.0.2.11"]  # read at start


def test_relative_path_is_relative_to_the_corefile(tmp_path: Path, up: FakeUpstream) -> None:
    (tmp_path / "my.hosts").write_text("10.0.0.8 rel.example.org\n")
    with Running(corefile("hosts my.hosts", up), source=str(tmp_path / "Corefile")) as srv:
        assert addrs(srv.query("rel.example.org.", "A")) == ["10.0.0.8"]


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_entries_and_reload_timestamp(tmp_path: Path, up: FakeUpstream) -> None:
    f = tmp_path / "hosts"
    write(f, "10.0.0.1 a.example.org b.example.org\n", mtime=1_700_000_000.5)
    body = "  10.0.0.2 c.example.org\n  2001:db8::2 c.example.org\n  reload 20ms"
    with Running(corefile(hosts_line(f, body), up)) as srv:
        # file: 2 names + 2 reverse; inline: 2 addresses + 2 reverse (as CoreDNS's Map.Len)
        assert srv.registry.get_sample_value("coredns_hosts_entries") == 8
        assert srv.registry.get_sample_value(
            "coredns_hosts_reload_timestamp_seconds") == 1_700_000_000.5
        write(f, "10.0.0.1 a.example.org\n", mtime=1_700_000_060)
        assert wait_until(lambda: srv.registry.get_sample_value(
            "coredns_hosts_reload_timestamp_seconds") == 1_700_000_060)
        assert srv.registry.get_sample_value("coredns_hosts_entries") == 6


# -- configuration ---------------------------------------------------------------------------


def parse(text: str) -> HostsConfig:
    cfg = build_sites(parse_corefile(text))[0].plugins["hosts"]
    assert isinstance(cfg, HostsConfig)
    return cfg


def test_defaults() -> None:
    assert parse(".:53 {\n hosts\n}\n") == HostsConfig(
        path="/etc/hosts", origins=None, inline=(), ttl=3600, reload=5.0, reverse=True,
        fall=None)


def test_options_parsed(tmp_path: Path) -> None:
    f = tmp_path / "h"
    cfg = parse(f".:53 {{\n hosts {f} Example.ORG 10.0.0.0/24 {{\n  10.0.0.1 a.example.org\n"
                "  ttl 60\n  no_reverse\n  reload 1m30s\n  fallthrough in-addr.arpa\n }\n}\n")
    assert cfg == HostsConfig(str(f), ("example.org.", "0.0.10.in-addr.arpa."),
                              ("10.0.0.1 a.example.org",), 60, 90.0, False, ("in-addr.arpa.",))


@pytest.mark.parametrize(("body", "line", "msg"), [
    pytest.param("ttl", 3, "ttl needs a time in second", id="ttl-missing"),
    pytest.param("ttl 1m", 3, "ttl needs a number of second", id="ttl-not-number"),
    pytest.param("ttl 0", 3, "ttl provided is invalid", id="ttl-zero"),
    pytest.param("ttl 65536", 3, "ttl provided is invalid", id="ttl-too-big"),
    pytest.param("reload", 3, "reload needs a duration (zero seconds to disable)",
                 id="reload-missing"),
    pytest.param("reload 1s 2s", 3, "reload needs a duration", id="reload-two"),
    pytest.param("reload soon", 3, "invalid duration for reload 'soon'", id="reload-bad"),
    pytest.param("reload -1s", 3, "invalid negative duration for reload '-1s'",
                 id="reload-negative"),
    pytest.param("no_reverse please", 3, "Wrong argument count", id="no_reverse-arg"),
    pytest.param("fallthrough\n  10.0.0.1 late.example.org", 4,
                 "unknown property '10.0.0.1'", id="inline-after-fallthrough"),
    pytest.param("fallthrough\n  tll 30", 4, "unknown property 'tll'", id="typo-after-fall"),
])
def test_config_errors_name_file_and_line(body: str, line: int, msg: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(f".:53 {{\n hosts {{\n  {body}\n }}\n}}\n")
    assert str(e.value).startswith(f"Corefile:{line} - plugin/hosts: {msg}")


def test_once_per_block() -> None:
    with pytest.raises(ConfigError, match="Corefile:3 - plugin/hosts: this plugin can only be "
                                          "used once per Server Block"):
        parse(".:53 {\n hosts\n hosts\n}\n")


def test_unreadable_path_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    bad = tmp_path / "plain" / "hosts"  # a path through a regular file: ENOTDIR
    with pytest.raises(ConfigError, match=f"Corefile:2 - plugin/hosts: unable to access "
                                          f"hosts file '{bad}'"):
        parse(f".:53 {{\n hosts {bad}\n}}\n")


def test_warnings_for_directory_and_non_entry_lines(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="linkdns")
    cfg = parse(f".:53 {{\n hosts {tmp_path} {{\n  tll 30\n  10.0.0.1 ok.example.org\n }}\n}}\n")
    assert f'Hosts file "{tmp_path}" is a directory' in caplog.text
    assert "Corefile:3 - ignoring 'tll 30'" in caplog.text
    assert cfg.inline == ("tll 30", "10.0.0.1 ok.example.org")  # kept, as CoreDNS does
