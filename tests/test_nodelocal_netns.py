"""Node-local mode for real, inside a network namespace each test creates and deletes.

The daemon runs as ``python -m linkdns -localip ...`` entered into the namespace (setns in the
child before exec, so signals reach linkdns itself); upstreams and test clients run in threads
that entered the namespace too. Nothing touches the host's network. Needs root, ``ip``
(iproute2) and ``iptables``; skipped, with the reason, where they are missing.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import dns.message
import dns.query
import dns.rcode
import pytest
from fakeupstream import FakeUpstream

T = TypeVar("T")
PY = sys.executable
LOCAL = "169.254.20.10"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _why_not() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root (ip netns add, iptables)"
    for cmd, pkg in (("ip", "iproute2"), ("iptables", "iptables"), ("iptables-save", "iptables"),
                     ("ip6tables-save", "iptables")):
        if shutil.which(cmd) is None:
            return f"needs the {cmd!r} command (apt-get install {pkg})"
    name = f"linkdns-probe-{secrets.token_hex(4)}"
    p = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if p.returncode != 0:
        return f"'ip netns add' is not permitted here: {p.stderr.strip()}"
    try:
        q = subprocess.run(["ip", "netns", "exec", name, "iptables", "-t", "raw", "-L"],
                           capture_output=True, text=True)
        if q.returncode != 0:
            return f"iptables' raw table is unavailable in a namespace: {q.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


_REASON = _why_not()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def enter(ns: str) -> None:
    """Move the calling thread (or a child before exec) into network namespace ``ns``."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def in_ns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread inside ``ns``; sockets it opens stay in ``ns``."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            enter(ns)
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join(30)
    assert not t.is_alive(), "in_ns timed out"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def sh(ns: str, *argv: str) -> str:
    p = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


def our_rules(ns: str) -> set[str]:
    """iptables-save lines mentioning the local IPs, each prefixed with its table."""
    out: set[str] = set()
    table = ""
    for line in sh(ns, "iptables-save").splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A") and ("169.254.20.10" in line or "10.96.0.10" in line):
            out.add(f"{table} {line}")
    return out


def expected_rules(ip: str, port: int = 53, health: int = 8080) -> set[str]:
    d, s = f"-d {ip}/32", f"-s {ip}/32"
    rules = set()
    for proto in ("tcp", "udp"):
        m = f"-p {proto} -m {proto}"
        rules |= {
            f"raw -A PREROUTING {d} {m} --dport {port} -j NOTRACK",
            f"filter -A INPUT {d} {m} --dport {port} -j ACCEPT",
            f"raw -A OUTPUT {s} {m} --sport {port} -j NOTRACK",
            f"filter -A OUTPUT {s} {m} --sport {port} -j ACCEPT",
            f"raw -A OUTPUT {d} {m} --dport {port} -j NOTRACK",
        }
    m = "-p tcp -m tcp"
    rules |= {f"raw -A OUTPUT {d} {m} --dport {health} -j NOTRACK",
              f"raw -A OUTPUT {s} {m} --sport {health} -j NOTRACK"}
    return rules


def addresses(ns: str, dev: str = "nodelocaldns") -> set[str] | None:
    p = subprocess.run(["ip", "-n", ns, "-o", "addr", "show", "dev", dev], capture_output=True,
                       text=True)
    if p.returncode != 0:
        return None
    words = p.stdout.split()
    return {words[i + 1] for i, w in enumerate(words[:-1]) if w == "inet"}


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"linkdns-test-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                      text=True).stdout


class Daemon:
    """``python -m linkdns ARGS`` inside ``ns``, its output collected line by line."""

    def __init__(self, ns: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.p = subprocess.Popen([PY, "-m", "linkdns", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, **(env or {})},
                                  preexec_fn=lambda: enter(ns))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    @property
    def out(self) -> str:
        with self.cond:
            return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 15.0) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(text in x for x in self.lines) or
                                    self.p.poll() is not None, timeout)
            found = any(text in x for x in self.lines)
        assert ok and found, f"no {text!r} in output:\n{self.out}"

    def stop(self, sig: int | None = signal.SIGTERM) -> int:
        """Send ``sig`` (None: send nothing) and wait for the exit status."""
        if sig is not None and self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            rc = self.p.wait(timeout=15)
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait()
        self.reader.join(5)
        assert self.p.stdout is not None
        self.p.stdout.close()
        return rc


@pytest.fixture
def upstream(ns: str) -> Iterator[FakeUpstream]:
    up = FakeUpstream()
    in_ns(ns, up.start)
    try:
        yield up
    finally:
        up.stop()


def config(tmp_path: Path, up: FakeUpstream, stub: FakeUpstream | None = None) -> list[str]:
    """node-cache's layout: a base Corefile with __PILLAR__ variables and a kube-dns ConfigMap."""
    (tmp_path / "Corefile.base").write_text(
        "cluster.local:53 {\n    errors\n    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__\n"
        f"    forward . __PILLAR__CLUSTER__DNS__:{up.port} {{\n            force_tcp\n    }}\n}}\n"
        ".:53 {\n    errors\n    cache 30\n    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__\n"
        "    forward . __PILLAR__UPSTREAM__SERVERS__\n}\n")
    cm = tmp_path / "kube-dns"
    cm.mkdir()
    (cm / "upstreamNameservers").write_text(f'["{up.addr}"]')
    if stub is not None:
        (cm / "stubDomains").write_text(f'{{"acme.local": ["{stub.addr}"]}}')
    return ["-conf", str(tmp_path / "Corefile"), "-basecorefile", str(tmp_path / "Corefile.base"),
            "-kubednscm", str(cm), "-upstreamsvc", "kube-dns-upstream"]


ENV = {"KUBE_DNS_UPSTREAM_SERVICE_HOST": "127.0.0.1"}


def ask(ns: str, ip: str, name: str, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    if tcp:
        return in_ns(ns, lambda: dns.query.tcp(q, ip, port=53, timeout=3))
    return in_ns(ns, lambda: dns.query.udp(q, ip, port=53, timeout=3))


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
            assert our_rules(ns) == expected_rules(LOCAL) | expected_rules("10.96.0.10")
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
    assert our_rules(ns) == set()


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
           "--dport", "53", "-j", "NOTRACK")
        sh(ns, "iptables", "-t", "filter", "-D", "OUTPUT", "-p", "tcp", "-s", LOCAL,
           "--sport", "53", "-j", "ACCEPT")
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
    assert our_rules(ns) == set() and addresses(ns) is None


def test_setup_off_touches_nothing(ns: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    sh(ns, "ip", "addr", "add", f"{LOCAL}/32", "dev", "lo")
    d = Daemon(ns, "-localip", LOCAL, "-setupinterface=false", "-setupiptables=false",
               *config(tmp_path, upstream), env=ENV)
    try:
        d.wait_for("[INFO] linkdns-")
        assert ask(ns, LOCAL, "example.org.").rcode() == dns.rcode.NOERROR
        assert addresses(ns) is None
        assert our_rules(ns) == set()
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
    assert addresses(ns) is None and our_rules(ns) == set()


def test_server_failing_to_start_removes_the_interface(ns: str, upstream: FakeUpstream,
                                                       tmp_path: Path) -> None:
    args = config(tmp_path, upstream)
    base = tmp_path / "Corefile.base"
    base.write_text(base.read_text().replace("    errors\n", "    nosuch\n", 1))
    d = Daemon(ns, "-localip", LOCAL, *args, env=ENV)
    assert d.stop(None) == 1
    assert "Unknown directive 'nosuch'" in d.out
    assert "Tearing down" in d.out
    assert addresses(ns) is None and our_rules(ns) == set()


def test_ipv6_local_ip(ns: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    d = Daemon(ns, "-localip", "fd00::10", *config(tmp_path, upstream), env=ENV)
    try:
        d.wait_for("[INFO] linkdns-")
        shown = sh(ns, "ip", "-6", "-o", "addr", "show", "dev", "nodelocaldns")
        assert "inet6 fd00::10/128" in shown
        assert sum("fd00::10" in x for x in sh(ns, "ip6tables-save").splitlines()) == 12
        r = in_ns(ns, lambda: dns.query.udp(dns.message.make_query("example.org.", "A"),
                                            "fd00::10", port=53, timeout=3))
        assert [rr.to_text() for rr in r.answer[0]] == ["192.0.2.1"]
    finally:
        assert d.stop() == 0, d.out
    assert "fd00::10" not in sh(ns, "ip6tables-save")
    assert addresses(ns) is None
