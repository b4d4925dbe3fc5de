"""Node-local mode for real, inside a network namespace each test creates and deletes
(helpers in netns.py): set up, serve, keep in place, tear down.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
from fakeupstream import FakeUpstream
from netns import (
    ENV,
    LOCAL,
    REASON,
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

from linkdns.nodelocal.rules import EBTables, Found, Rule, broute_rules

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
    # one rule left by an older node-cache (no comment): adopted, not doubled, removed at exit
    older = ["-p", "udp", "-d", "fd00::10", "--dport", "53", "-j", "NOTRACK"]
    sh(ns, "ip6tables", "-t", "raw", "-I", "PREROUTING", *older)
    d = Daemon(ns, "-localip", "fd00::10", *config(tmp_path, upstream), env=ENV)
    try:
        d.wait_for("[INFO] linkdns-")
        shown = sh(ns, "ip", "-6", "-o", "addr", "show", "dev", "nodelocaldns")
        assert "inet6 fd00::10/128" in shown
        skip = ' -m comment --comment "NodeLocal DNS Cache: skip conntrack"'
        adopted = "raw -A PREROUTING -d fd00::10/128 -p udp -m udp --dport 53 -j NOTRACK"
        assert our_rules(ns, ("fd00::10",), "ip6tables-save") == sorted(
            adopted if x == adopted.replace(" -j", f"{skip} -j") else x
            for x in expected_rules("fd00::10", prefix=128))
        r = in_ns(ns, lambda: dns.query.udp(dns.message.make_query("example.org.", "A"),
                                            "fd00::10", port=53, timeout=3))
        assert [rr.to_text() for rr in r.answer[0]] == ["192.0.2.1"]
    finally:
        assert d.stop() == 0, d.out
    assert "fd00::10" not in sh(ns, "ip6tables-save")
    assert addresses(ns) is None


def _no_broute() -> str | None:
    """Why the ebtables broute table cannot be used here (None: it can)."""
    if REASON is not None:
        return REASON
    if shutil.which("ebtables") is None:
        return "needs the 'ebtables' command (apt-get install ebtables)"
    name = f"linkdns-probe-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        p = subprocess.run(["ip", "netns", "exec", name, "ebtables", "-t", "broute", "-L"],
                           capture_output=True, text=True)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    if p.returncode != 0:
        return ("the kernel has no ebtables broute table (CONFIG_BRIDGE_EBT_BROUTE, or "
                f"CONFIG_NFT_BRIDGE_META for ebtables-nft): {p.stderr.strip()}")
    return None


NO_BROUTE = _no_broute()


def broute(ns: str) -> list[str]:
    return [x.strip() for x in sh(ns, "ebtables", "-t", "broute", "-L", "BROUTING").splitlines()
            if "--ip" in x]


@pytest.mark.skipif(NO_BROUTE is not None, reason=NO_BROUTE or "")
def test_setupebtables_adds_the_broute_rule_and_removes_it(
        ns: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    d = Daemon(ns, "-localip", LOCAL, "-setupebtables", *config(tmp_path, upstream), env=ENV)
    try:
        d.wait_for("[INFO] linkdns-")
        assert broute(ns) == [f"-p IPv4 --ip-dst {LOCAL} -j redirect"]
        assert our_rules(ns) == expected_rules(LOCAL)
        assert ask(ns, LOCAL, "example.org.").rcode() == dns.rcode.NOERROR
    finally:
        assert d.stop() == 0, d.out
    assert broute(ns) == [] and our_rules(ns) == []


@pytest.mark.skipif(REASON is not None or NO_BROUTE is None or shutil.which("ebtables") is None,
                    reason=REASON or "the kernel has the broute table (tested above)")
def test_setupebtables_without_a_broute_table_fails_and_undoes_its_setup(
        ns: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    d = Daemon(ns, "-localip", LOCAL, "-setupebtables", *config(tmp_path, upstream), env=ENV)
    assert d.stop(None) == 1
    assert (f"[FATAL] nodelocal: failed to set up rules: ebtables -t broute -A BROUTING -p IPv4 "
            f"--ip-dst {LOCAL} -j redirect: ") in d.out
    assert "Tearing down what this instance set up" in d.out
    assert our_rules(ns) == [] and addresses(ns) is None


@pytest.mark.skipif(shutil.which("ebtables") is None, reason="needs the 'ebtables' command")
def test_ebtables_rules_checked_added_and_deleted_by_real_ebtables(ns: str) -> None:
    """The broute rules' matches and target, handled by the real ebtables in the nat table's
    PREROUTING chain (any kernel with ebtables has it): listing, append, every copy deleted."""
    def runner(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)

    eb = EBTables(runner)
    for rule in broute_rules([LOCAL], False) + broute_rules(["fd00::10"], True):
        nat = Rule("nat", "PREROUTING", rule.args)
        assert eb.ensure(nat) is Found.ADDED
        assert eb.ensure(nat) is Found.PRESENT
        sh(ns, "ebtables", "-t", "nat", "-A", "PREROUTING", *rule.args)  # a second copy
        assert eb.count(nat) == 2
        assert eb.delete(nat) == 2 and eb.count(nat) == 0
