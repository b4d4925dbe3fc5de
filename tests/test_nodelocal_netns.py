"""Node-local mode for real, inside a network namespace each test creates and deletes
(helpers in netns.py): set up, serve, keep in place, tear down.
"""

from __future__ import annotations

import signal
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
from fakeupstream import FakeUpstream
from netns import (
    ENV,
    LOCAL,
    Daemon,
    addresses,
    ask,
    config,
    expected_rules,
    in_ns,
    needed,
    ns,
    our_rules,
    sh,
    upstream,
    wait_until,
)

pytestmark = needed
__all__ = ["ns", "upstream"]  # fixtures


def test_sets_up_serves_and_tears_down_on_sigterm(ns: str, upstream: FakeUpstream,
                                                  tmp_path: Path) -> None:
    stub = FakeUpstream()
    stub.set_zone({"www.acme.local.": ["192.0.2.77"]})
    in_ns(ns, stub.start)
    try:
        d = Daemon(ns, "-localip", f"{LOCAL},10.96.0.10", *config(tmp_path, upstream, stub),
                   env=ENV)
        try:
            d.wait_for("[INFO] linkdns-")
            assert addresses(ns) == {f"{LOCAL}/32", "10.96.0.10/32"}
            assert our_rules(ns) == sorted(expected_rules(LOCAL) + expected_rules("10.96.0.10"))
            for ip, name, tcp in [(LOCAL, "example.org.", False), (LOCAL, "example.org.", True),
                                  ("10.96.0.10", "svc.cluster.local.", False)]:
                r = ask(ns, ip, name, tcp)
                assert r.rcode() == dns.rcode.NOERROR, d.out
                assert [rr.to_text() for rr in r.answer[0]] == ["192.0.2.1"]
            r = ask(ns, LOCAL, "www.acme.local.")
            assert [rr.to_text() for rr in r.answer[0]] == ["192.0.2.77"]
            assert {q.proto for q in upstream.queries if q.qname == "svc.cluster.local."} == {"tcp"}
            assert stub.queries and upstream.queries
        finally:
            rc = d.stop()
    finally:
        stub.stop()
    assert rc == 0, d.out
    assert "[INFO] Tearing down" in d.out
    assert addresses(ns) is None  # interface gone
    assert our_rules(ns) == []


def test_skipteardown_leaves_interface_and_rules(ns: str, upstream: FakeUpstream,
                                                 tmp_path: Path) -> None:
    d = Daemon(ns, "-localip", LOCAL, "-skipteardown=true", *config(tmp_path, upstream), env=ENV)
    d.wait_for("[INFO] linkdns-")
    assert d.stop(signal.SIGINT) == 0, d.out
    assert "Tearing down" not in d.out
    assert addresses(ns) == {f"{LOCAL}/32"}
    assert our_rules(ns) == expected_rules(LOCAL)


def test_missing_rule_and_address_come_back(ns: str, upstream: FakeUpstream,
                                            tmp_path: Path) -> None:
    d = Daemon(ns, "-localip", LOCAL, "-syncinterval", "200ms", "-health-port", "9090",
               *config(tmp_path, upstream), env=ENV)
    try:
        d.wait_for("[INFO] linkdns-")
        want = expected_rules(LOCAL, health=9090)
        assert our_rules(ns) == want
        sh(ns, "iptables", "-t", "raw", "-D", "PREROUTING", "-p", "udp", "-d", LOCAL,
           "--dport", "53", "-j", "NOTRACK", "-m", "comment", "--comment",
           "NodeLocal DNS Cache: skip conntrack")
        sh(ns, "iptables", "-t", "filter", "-D", "OUTPUT", "-p", "tcp", "-s", LOCAL,
           "--sport", "53", "-j", "ACCEPT", "-m", "comment", "--comment",
           "NodeLocal DNS Cache: allow DNS traffic")
        sh(ns, "ip", "addr", "del", f"{LOCAL}/32", "dev", "nodelocaldns")
        assert wait_until(lambda: our_rules(ns) == want and addresses(ns) == {f"{LOCAL}/32"}), \
            d.out
        assert "Added back nodelocaldns rule - -t raw PREROUTING -p udp" in d.out
        assert f"Added back address {LOCAL}/32 to interface nodelocaldns" in d.out
        sh(ns, "ip", "link", "del", "nodelocaldns")
        assert wait_until(lambda: addresses(ns) == {f"{LOCAL}/32"}), d.out
        assert ask(ns, LOCAL, "example.org.").rcode() == dns.rcode.NOERROR
    finally:
        assert d.stop() == 0, d.out
    assert our_rules(ns) == [] and addresses(ns) is None


def test_setup_off_touches_nothing(ns: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    sh(ns, "ip", "addr", "add", f"{LOCAL}/32", "dev", "lo")
    d = Daemon(ns, "-localip", LOCAL, "-setupinterface=false", "-setupiptables=false",
               *config(tmp_path, upstream), env=ENV)
    try:
        d.wait_for("[INFO] linkdns-")
        assert ask(ns, LOCAL, "example.org.").rcode() == dns.rcode.NOERROR
        assert addresses(ns) is None
        assert our_rules(ns) == []
    finally:
        assert d.stop() == 0, d.out
    assert addresses(ns, "lo") == {"127.0.0.1/8", f"{LOCAL}/32"}


def test_missing_commands_exit_1_before_touching_anything(ns: str, upstream: FakeUpstream,
                                                          tmp_path: Path) -> None:
    d = Daemon(ns, "-localip", LOCAL, *config(tmp_path, upstream),
               env={**ENV, "PATH": str(tmp_path / "empty")})
    assert d.stop(None) == 1
    assert "[FATAL] nodelocal: the 'ip' command (package iproute2) is not installed" in d.out
    assert "[FATAL] nodelocal: the 'iptables' command (package iptables)" in d.out
    assert addresses(ns) is None and our_rules(ns) == []


def test_server_failing_to_start_removes_the_interface(ns: str, upstream: FakeUpstream,
                                                       tmp_path: Path) -> None:
    args = config(tmp_path, upstream)
    base = tmp_path / "Corefile.base"
    base.write_text(base.read_text().replace("    errors\n", "    nosuch\n", 1))
    d = Daemon(ns, "-localip", LOCAL, *args, env=ENV)
    assert d.stop(None) == 1
    assert "Unknown directive 'nosuch'" in d.out
    assert "Tearing down" in d.out
    assert addresses(ns) is None and our_rules(ns) == []


def test_ipv6_local_ip(ns: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    d = Daemon(ns, "-localip", "fd00::10", *config(tmp_path, upstream), env=ENV)
    try:
        d.wait_for("[INFO] linkdns-")
        shown = sh(ns, "ip", "-6", "-o", "addr", "show", "dev", "nodelocaldns")
        assert "inet6 fd00::10/128" in shown
        assert our_rules(ns, ("fd00::10",), "ip6tables-save") == \
            expected_rules("fd00::10", prefix=128)
        r = in_ns(ns, lambda: dns.query.udp(dns.message.make_query("example.org.", "A"),
                                            "fd00::10", port=53, timeout=3))
        assert [rr.to_text() for rr in r.answer[0]] == ["192.0.2.1"]
    finally:
        assert d.stop() == 0, d.out
    assert "fd00::10" not in sh(ns, "ip6tables-save")
    assert addresses(ns) is None
