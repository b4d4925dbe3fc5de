"""The node setup belongs to the node: adoption (node-cache's rules in both forms, a SIGKILLed
instance's leftovers), failed starts that undo nothing of others, overlap and last one out.
Real daemons in a network namespace each test creates (helpers in netns.py).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

import dns.rcode
import pytest
from fakeupstream import FakeUpstream
from netns import (
    ENV,
    KUBE_DNS,
    LOCAL,
    Daemon,
    addresses,
    ask,
    config,
    expected_rules,
    needed,
    ns,
    our_rules,
    sh,
    upstream,
)

pytestmark = needed
__all__ = ["ns", "upstream"]  # fixtures

TWO = f"{LOCAL},{KUBE_DNS}"
COMMENT = {"NOTRACK": "NodeLocal DNS Cache: skip conntrack",
           "ACCEPT": "NodeLocal DNS Cache: allow DNS traffic"}


def node_cache_rules(ip: str, comments: bool, port: int = 53, health: int = 8080
                     ) -> list[tuple[str, str, list[str]]]:
    """cmd/node-cache/app/cache_app.go's initIptables, transcribed here on its own (not taken
    from linkdns): (table, chain, args); ``comments=False`` is node-cache before 2023."""
    rows = [("raw", "PREROUTING", "tcp", "-d", "--dport", port, "NOTRACK"),
            ("raw", "PREROUTING", "udp", "-d", "--dport", port, "NOTRACK"),
            ("filter", "INPUT", "tcp", "-d", "--dport", port, "ACCEPT"),
            ("filter", "INPUT", "udp", "-d", "--dport", port, "ACCEPT"),
            ("raw", "OUTPUT", "tcp", "-s", "--sport", port, "NOTRACK"),
            ("raw", "OUTPUT", "udp", "-s", "--sport", port, "NOTRACK"),
            ("filter", "OUTPUT", "tcp", "-s", "--sport", port, "ACCEPT"),
            ("filter", "OUTPUT", "udp", "-s", "--sport", port, "ACCEPT"),
            ("raw", "OUTPUT", "tcp", "-d", "--dport", port, "NOTRACK"),
            ("raw", "OUTPUT", "udp", "-d", "--dport", port, "NOTRACK"),
            ("raw", "OUTPUT", "tcp", "-d", "--dport", health, "NOTRACK"),
            ("raw", "OUTPUT", "tcp", "-s", "--sport", health, "NOTRACK")]
    out = []
    for table, chain, proto, addr, popt, p, target in rows:
        args = ["-p", proto, addr, ip, popt, str(p), "-j", target]
        if comments:
            args += ["-m", "comment", "--comment", COMMENT[target]]
        out.append((table, chain, args))
    return out


def node_cache_sets_up(ns: str, ips: list[str], comments: bool) -> None:
    """What node-cache does on a node: its dummy interface, then EnsureRule(Prepend) for each
    rule (``-C``, and ``-I`` if missing)."""
    if addresses(ns) is None:
        kind = "dummy" if subprocess.run(["ip", "-n", ns, "link", "add", "nodelocaldns", "type",
                                          "dummy"], capture_output=True).returncode == 0 else ""
        if not kind:  # a kernel without the dummy driver (as linkdns, a bridge then)
            sh(ns, "ip", "link", "add", "nodelocaldns", "type", "bridge")
    for ip in ips:
        if f"{ip}/32" not in (addresses(ns) or set()):
            sh(ns, "ip", "addr", "add", f"{ip}/32", "dev", "nodelocaldns")
        for table, chain, args in node_cache_rules(ip, comments):
            check = subprocess.run(["ip", "netns", "exec", ns, "iptables", "-w", "5", "-t", table,
                                    "-C", chain, *args], capture_output=True)
            if check.returncode != 0:
                sh(ns, "iptables", "-w", "5", "-t", table, "-I", chain, *args)


def serves(ns: str, ip: str = LOCAL) -> bool:
    return ask(ns, ip, "example.org.").rcode() == dns.rcode.NOERROR


def test_from_node_cache_both_forms_adopted_then_removed_then_node_cache_again(
        ns: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    # A node that ran the older node-cache (no comments) and then today's, neither torn down:
    # LOCAL has both forms; KUBE_DNS only the older one.
    node_cache_sets_up(ns, [LOCAL, KUBE_DNS], comments=False)
    node_cache_sets_up(ns, [LOCAL], comments=True)
    before = our_rules(ns)
    assert before == sorted(expected_rules(LOCAL) + expected_rules(LOCAL, comments=False)
                            + expected_rules(KUBE_DNS, comments=False))
    d = Daemon(ns, "-localip", TWO, *config(tmp_path, upstream), env=ENV)
    try:
        d.wait_for("[INFO] linkdns-")
        assert our_rules(ns) == before  # adopted: nothing added, nothing removed
        assert addresses(ns) == {f"{LOCAL}/32", f"{KUBE_DNS}/32"}
        assert "Added nodelocaldns rule" not in d.out and "Added interface" not in d.out
        assert "Adopted interface - nodelocaldns" in d.out
        assert "Adopted nodelocaldns rule in node-cache's older form (without comment) - " \
            f"-t raw PREROUTING -p tcp -d {KUBE_DNS} --dport 53 -j NOTRACK -m comment" in d.out
        assert serves(ns, LOCAL) and serves(ns, KUBE_DNS)
    finally:
        assert d.stop() == 0, d.out
    assert our_rules(ns) == [] and addresses(ns) is None  # both forms gone
    node_cache_sets_up(ns, [LOCAL, KUBE_DNS], comments=True)  # and back to node-cache
    assert our_rules(ns) == sorted(expected_rules(LOCAL) + expected_rules(KUBE_DNS))


def test_to_node_cache_after_skipteardown_node_cache_finds_its_own_rules(
        ns: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    d = Daemon(ns, "-localip", TWO, "-skipteardown", *config(tmp_path, upstream), env=ENV)
    d.wait_for("[INFO] linkdns-")
    assert d.stop() == 0, d.out
    left = our_rules(ns)
    assert left == sorted(expected_rules(LOCAL) + expected_rules(KUBE_DNS))
    node_cache_sets_up(ns, [LOCAL, KUBE_DNS], comments=True)  # its -C finds every rule
    assert our_rules(ns) == left


def test_failed_second_start_leaves_the_first_instance_alone(
        ns: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    lock = tmp_path / "node.lock"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Daemon(ns, "-localip", TWO, *config(tmp_path / "a", upstream, lock=lock), env=ENV)
    try:
        first.wait_for("[INFO] linkdns-")
        want = sorted(expected_rules(LOCAL) + expected_rules(KUBE_DNS))
        # hand-over off: with it, the second would take the sockets over instead of failing
        second = Daemon(ns, "-localip", TWO, *config(tmp_path / "b", upstream, lock=lock),
                        "-handover.socket", "none", env=ENV)
        assert second.stop(None) == 1, second.out
        assert "Address already in use" in second.out
        assert "Removed" not in second.out and "Tearing down" not in second.out
        assert our_rules(ns) == want
        assert addresses(ns) == {f"{LOCAL}/32", f"{KUBE_DNS}/32"}
        assert serves(ns, LOCAL) and serves(ns, KUBE_DNS)
    finally:
        assert first.stop() == 0, first.out
    assert our_rules(ns) == [] and addresses(ns) is None


def test_sigkilled_instance_leaves_rules_the_next_start_adopts(
        ns: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    args = ["-localip", LOCAL, *config(tmp_path, upstream)]
    killed = Daemon(ns, *args, env=ENV)
    killed.wait_for("[INFO] linkdns-")
    assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
    assert our_rules(ns) == expected_rules(LOCAL) and addresses(ns) == {f"{LOCAL}/32"}
    d = Daemon(ns, *args, env=ENV)
    try:
        d.wait_for("[INFO] linkdns-")
        assert "Adopted 12 nodelocaldns rules already in place" in d.out
        assert our_rules(ns) == expected_rules(LOCAL)
        assert serves(ns)
    finally:
        assert d.stop() == 0, d.out
    assert our_rules(ns) == [] and addresses(ns) is None


def test_overlapping_instances_with_workers_last_one_out_tears_down(
        ns: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    """Two instances of ``-workers 2`` on the same local IPs at once (the second takes the
    first's sockets over worker by worker): one node setup, by each parent once its workers
    listen; the first stopped leaves it to the other; the last one removes it."""
    args = ["-localip", TWO, "-workers", "2", *config(tmp_path, upstream)]
    want = sorted(expected_rules(LOCAL) + expected_rules(KUBE_DNS))
    old = Daemon(ns, *args, env=ENV)
    new: Daemon | None = None
    try:
        old.wait_for("Node setup done - interface nodelocaldns, 24 rules")
        assert our_rules(ns) == want
        # one node setup, by the parent, after both workers listen
        assert old.out.count("Node setup done") == 1
        assert old.out.count("[INFO] linkdns-") == 2
        assert old.out.index("Node setup done") > old.out.rindex("[INFO] linkdns-")
        new = Daemon(ns, *args, env=ENV)
        new.wait_for("Adopted 24 nodelocaldns rules already in place")
        assert old.stop() == 0, old.out
        assert "Leaving interface and rules in place: another instance is serving" in old.out
        assert our_rules(ns) == want
        assert addresses(ns) == {f"{LOCAL}/32", f"{KUBE_DNS}/32"}
        assert all(serves(ns, ip) for ip in (LOCAL, KUBE_DNS) for _ in range(20))
        assert ask(ns, LOCAL, "example.org.", tcp=True).rcode() == dns.rcode.NOERROR
    finally:
        old.stop()
        if new is not None:
            assert new.stop() == 0, new.out
    assert new is not None and "Tearing down" in new.out
    assert our_rules(ns) == [] and addresses(ns) is None


def test_start_waits_for_a_teardown_in_progress(
        ns: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    lock = tmp_path / "node.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a last instance out holds while it tears down
    try:
        d = Daemon(ns, "-localip", LOCAL, *config(tmp_path, upstream, lock=lock), env=ENV)
        d.wait_for("Waiting for another instance to finish tearing down")
        time.sleep(0.3)
        assert addresses(ns) is None  # nothing set up while the teardown runs
    finally:
        os.close(fd)
    try:
        d.wait_for("[INFO] linkdns-")
        assert our_rules(ns) == expected_rules(LOCAL) and serves(ns)
    finally:
        assert d.stop() == 0, d.out
    assert our_rules(ns) == [] and addresses(ns) is None


@pytest.mark.parametrize("skip", [False, True], ids=["teardown", "skipteardown"])
def test_lone_instance_alone_decides(ns: str, upstream: FakeUpstream, tmp_path: Path,
                                     skip: bool) -> None:
    flags = ["-skipteardown"] if skip else []
    d = Daemon(ns, "-localip", LOCAL, *flags, *config(tmp_path, upstream), env=ENV)
    d.wait_for("[INFO] linkdns-")
    assert d.stop() == 0, d.out
    assert (our_rules(ns) == expected_rules(LOCAL)) is skip
