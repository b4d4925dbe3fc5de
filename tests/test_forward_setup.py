"""forward: parsing the directive (pure: no sockets) — options, defaults, errors with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from linkdns.config import build_sites
from linkdns.corefile import parse_corefile
from linkdns.errors import ConfigError
from linkdns.plugins.forward import ForwardConfig, parse
from linkdns.plugins.forward.setup import UpstreamSpec


def cfg_of(block: str) -> ForwardConfig:
    d = parse_corefile(f". {{\n{block}\n}}\n", "Corefile")[0].directives[0]
    return parse(d)


def test_defaults_match_coredns() -> None:
    c = cfg_of("forward . 10.0.0.1")
    assert c.from_zone == "."
    assert c.upstreams == [UpstreamSpec("10.0.0.1", 53)]
    assert (c.max_fails, c.expire, c.policy, c.hc_interval, c.hc_domain, c.hc_recursion) == (
        2, 10.0, "random", 0.5, ".", True)
    assert (c.force_tcp, c.prefer_udp, c.max_concurrent, c.bufsize) == (False, False, 0, None)
    assert (c.read_timeout, c.query_timeout) == (2.0, 5.0)
    assert c.failover == frozenset() and c.next_rcodes == frozenset()


@pytest.mark.parametrize(("to", "want"), [
    pytest.param("1.2.3.4", [UpstreamSpec("1.2.3.4", 53)], id="ip"),
    pytest.param("1.2.3.4:5353", [UpstreamSpec("1.2.3.4", 5353)], id="ip-port"),
    pytest.param("[2001:db8::1]:5300", [UpstreamSpec("2001:db8::1", 5300)], id="v6-port"),
    pytest.param("2001:db8::1", [UpstreamSpec("2001:db8::1", 53)], id="v6-bare"),
    pytest.param("dns://9.9.9.9", [UpstreamSpec("9.9.9.9", 53)], id="dns-scheme"),
    pytest.param("tls://9.9.9.9", [UpstreamSpec("9.9.9.9", 853, tls=True)], id="tls-853"),
    pytest.param("tls://[::1]:8853", [UpstreamSpec("::1", 8853, tls=True)], id="tls-v6-port"),
    pytest.param("1.1.1.1 8.8.8.8:53", [UpstreamSpec("1.1.1.1", 53), UpstreamSpec("8.8.8.8", 53)],
                 id="several"),
])
def test_to_forms(to: str, want: list[UpstreamSpec]) -> None:
    assert cfg_of(f"forward . {to}").upstreams == want


def test_to_resolv_conf_file(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text("# comment\nsearch cluster.local\nnameserver 10.96.0.10\n"
                  "options ndots:5\nnameserver ::1\nnameserver not-an-ip\n")
    c = cfg_of(f"forward . {rc} 10.0.0.1:5353")
    assert c.upstreams == [UpstreamSpec("10.96.0.10", 53), UpstreamSpec("::1", 53),
                           UpstreamSpec("10.0.0.1", 5353)]
    assert [u.addr for u in c.upstreams] == ["10.96.0.10:53", "[::1]:53", "10.0.0.1:5353"]


def test_options_parsed() -> None:
    c = cfg_of("""forward example.ORG 10.0.0.1 {
        except a.example.org B.example.org
        force_tcp
        prefer_udp
        bufsize 1232
        expire 30s
        max_fails 0
        policy round_robin
        health_check 2s no_rec domain Example.com
        max_concurrent 1000
        failover SERVFAIL refused
        next NXDOMAIN
        failfast_all_unhealthy_upstreams
        max_connect_attempts 3
        min_max_dial_timeout 500ms 10s
        max_age 1m
        max_idle_conns 8
        tls_servername dns.example
        read_timeout 250ms
        query_timeout 1s
    }""")
    assert c.from_zone == "example.org."
    assert c.ignored == ["a.example.org.", "b.example.org."]
    assert c.force_tcp and c.prefer_udp and c.failfast_all_unhealthy
    assert (c.bufsize, c.expire, c.max_fails, c.policy) == (1232, 30.0, 0, "round_robin")
    assert (c.hc_interval, c.hc_recursion, c.hc_domain) == (2.0, False, "example.com.")
    assert c.max_concurrent == 1000
    assert c.failover == {2, 5} and c.next_rcodes == {3}
    assert (c.max_connect_attempts, c.min_dial_timeout, c.max_dial_timeout) == (3, 0.5, 10.0)
    assert (c.max_age, c.max_idle_conns, c.tls_servername) == (60.0, 8, "dns.example")
    assert (c.read_timeout, c.query_timeout) == (0.25, 1.0)


def test_reverse_cidr_from_uses_first_zone() -> None:
    assert cfg_of("forward 10.0.0.0/8 1.2.3.4").from_zone == "10.in-addr.arpa."


def test_tls_upstream_gets_a_context() -> None:
    c = cfg_of("forward . tls://1.1.1.1 {\n tls_servername cloudflare-dns.com\n}")
    assert c.ssl_context is not None and c.upstreams[0].tls


E_ARGS = "Wrong argument count or unexpected line ending after"


@pytest.mark.parametrize(("block", "line", "msg"), [
    pytest.param("forward", 2, f"{E_ARGS} 'forward'", id="no-args"),
    pytest.param("forward .", 2, f"{E_ARGS} 'forward'", id="no-to"),
    pytest.param("forward . x", 2, 'not an IP address or file: "x"', id="bad-to"),
    pytest.param("forward . 1.2.3.4:99999", 2, 'not an IP address or file: "1.2.3.4:99999"',
                 id="bad-port"),
    pytest.param("forward . grpc://1.2.3.4", 2,
                 "'grpc' is not supported as a destination protocol in forward", id="scheme"),
    pytest.param("forward . " + " ".join(f"10.0.0.{i}" for i in range(16)), 2,
                 "more than 15 TOs configured: 16", id="too-many"),
    pytest.param("forward . 1.2.3.4 {\n  bogus\n}", 3, "unknown property 'bogus'", id="unknown"),
    pytest.param("forward . 1.2.3.4 {\n  max_fails x\n}", 3, "max_fails: invalid integer 'x'",
                 id="max-fails-nan"),
    pytest.param("forward . 1.2.3.4 {\n  max_fails -1\n}", 3, "max_fails can't be negative: -1",
                 id="max-fails-negative"),
    pytest.param("forward . 1.2.3.4 {\n  max_fails\n}", 3, f"{E_ARGS} 'max_fails'",
                 id="max-fails-missing"),
    pytest.param("forward . 1.2.3.4 {\n  expire soon\n}", 3, "expire: invalid duration 'soon'",
                 id="expire-bad"),
    pytest.param("forward . 1.2.3.4 {\n  policy fastest\n}", 3, "unknown policy 'fastest'",
                 id="policy"),
    pytest.param("forward . 1.2.3.4 {\n  health_check\n}", 3, f"{E_ARGS} 'health_check'",
                 id="hc-missing"),
    pytest.param("forward . 1.2.3.4 {\n  health_check 1s fast\n}", 3,
                 "health_check: unknown option fast", id="hc-option"),
    pytest.param("forward . 1.2.3.4 {\n  health_check 1s domain\n}", 3,
                 f"{E_ARGS} 'health_check'", id="hc-domain-missing"),
    pytest.param("forward . 1.2.3.4 {\n  health_check 1s domain a..b\n}", 3,
                 "health_check: invalid domain name a..b", id="hc-domain-bad"),
    pytest.param("forward . 1.2.3.4 {\n  force_tcp yes\n}", 3, f"{E_ARGS} 'force_tcp'",
                 id="flag-with-arg"),
    pytest.param("forward . 1.2.3.4 {\n  max_concurrent -5\n}", 3,
                 "max_concurrent can't be negative: -5", id="max-concurrent"),
    pytest.param("forward . 1.2.3.4 {\n  bufsize 100\n}", 3,
                 "bufsize must be between 512 and 65535: 100", id="bufsize-small"),
    pytest.param("forward . 1.2.3.4 {\n  failover\n}", 3, f"{E_ARGS} 'failover'",
                 id="failover-empty"),
    pytest.param("forward . 1.2.3.4 {\n  next NOPE\n}", 3, "NOPE is not a valid rcode",
                 id="next-bad-rcode"),
    pytest.param("forward . 1.2.3.4 {\n  except\n}", 3, f"{E_ARGS} 'except'", id="except-empty"),
    pytest.param("forward . 1.2.3.4 {\n  tls a b c d\n}", 3, f"{E_ARGS} 'tls'", id="tls-args"),
    pytest.param("forward . 1.2.3.4 {\n  tls /nonexistent/ca.pem\n}", 3, "tls: ",
                 id="tls-missing-file"),
    pytest.param("forward . 1.2.3.4 {\n  read_timeout 0\n}", 3,
                 "read_timeout must be positive", id="read-timeout-zero"),
    pytest.param("forward . 1.2.3.4 {\n  min_max_dial_timeout 5s 1s\n}", 3,
                 "min_max_dial_timeout: need 0 < min <= max", id="dial-bounds"),
])
def test_parse_errors_name_file_and_line(block: str, line: int, msg: str) -> None:
    text = f". {{\n{block}\n}}\n"
    with pytest.raises(ConfigError) as ei:
        build_sites(parse_corefile(text, "Corefile"))
    e = ei.value
    assert (e.file, e.line, e.plugin) == ("Corefile", line, "forward")
    assert msg in e.msg
    assert str(e).startswith(f"Corefile:{line} - plugin/forward: ")


def test_resolv_conf_without_nameservers(tmp_path: Path) -> None:
    rc = tmp_path / "empty.conf"
    rc.write_text("search example.org\n")
    with pytest.raises(ConfigError, match="no nameservers found"):
        cfg_of(f"forward . {rc}")


def test_several_forward_lines_are_allowed() -> None:
    sites = build_sites(parse_corefile(
        ". {\n forward example.org 10.0.0.1\n forward . 10.0.0.2\n}\n", "Corefile"))
    confs = sites[0].plugins["forward"]
    assert [c.from_zone for c in confs] == ["example.org.", "."]
