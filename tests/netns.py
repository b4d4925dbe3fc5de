"""Helpers for node-local tests inside network namespaces each test creates and deletes.

The daemon runs as ``python -m linkdns -localip ...`` entered into the namespace (setns in the
child before exec, so signals reach linkdns itself); upstreams and test clients run in threads
that entered the namespace too. Nothing touches the host's network. Needs root, ``ip``
(iproute2) and ``iptables``; test modules skip, with :data:`REASON`, where they are missing.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import dns.message
import dns.query
import dns.rcode
import drill
import pytest
from fakeupstream import FakeUpstream

T = TypeVar("T")
PY = sys.executable
LOCAL = "169.254.20.10"
KUBE_DNS = "10.96.0.10"
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


REASON = _why_not()
#: put ``pytestmark = netns.needed`` in a test module
needed = pytest.mark.skipif(REASON is not None, reason=REASON or "")


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


SKIP = '-m comment --comment "NodeLocal DNS Cache: skip conntrack"'
ALLOW = '-m comment --comment "NodeLocal DNS Cache: allow DNS traffic"'


def our_rules(ns: str, ips: tuple[str, ...] = (LOCAL, "10.96.0.10"),
              save: str = "iptables-save") -> list[str]:
    """iptables-save lines mentioning the local IPs, each prefixed with its table, sorted;
    a rule present twice is listed twice."""
    out: list[str] = []
    table = ""
    for line in sh(ns, save).splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A") and any(ip in line for ip in ips):
            out.append(f"{table} {line}")
    return sorted(out)


def expected_rules(ip: str, port: int = 53, health: int = 8080, comments: bool = True,
                   prefix: int = 32) -> list[str]:
    """node-cache's rules for ``ip`` as iptables-save shows them (``comments=False``: the
    older form node-cache used before 2023)."""
    d, s = f"-d {ip}/{prefix}", f"-s {ip}/{prefix}"
    skip, allow = (f" {SKIP}", f" {ALLOW}") if comments else ("", "")
    rules = []
    for proto in ("tcp", "udp"):
        m = f"-p {proto} -m {proto}"
        rules += [
            f"raw -A PREROUTING {d} {m} --dport {port}{skip} -j NOTRACK",
            f"filter -A INPUT {d} {m} --dport {port}{allow} -j ACCEPT",
            f"raw -A OUTPUT {s} {m} --sport {port}{skip} -j NOTRACK",
            f"filter -A OUTPUT {s} {m} --sport {port}{allow} -j ACCEPT",
            f"raw -A OUTPUT {d} {m} --dport {port}{skip} -j NOTRACK",
        ]
    m = "-p tcp -m tcp"
    rules += [f"raw -A OUTPUT {d} {m} --dport {health}{skip} -j NOTRACK",
              f"raw -A OUTPUT {s} {m} --sport {health}{skip} -j NOTRACK"]
    return sorted(rules)


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


class Daemon(drill.Daemon):
    """``python -m linkdns ARGS`` inside ``ns``, its output collected line by line."""

    def __init__(self, ns: str, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(*args, env=env, preexec_fn=lambda: enter(ns))


@pytest.fixture
def upstream(ns: str) -> Iterator[FakeUpstream]:
    up = FakeUpstream()
    in_ns(ns, up.start)
    try:
        yield up
    finally:
        up.stop()


class Upstream(Protocol):
    """What config() needs of an upstream: a FakeUpstream, or drill.SlowUpstream (a process
    of its own)."""

    @property
    def addr(self) -> str: ...

    @property
    def port(self) -> int: ...


def config(tmp_path: Path, up: Upstream, stub: FakeUpstream | None = None,
           extra: str = "", lock: Path | None = None) -> list[str]:
    """node-cache's layout: a base Corefile with __PILLAR__ variables and a kube-dns ConfigMap.
    ``extra``: lines for the ``.:53`` block; ``lock``: the node lock file (default in
    ``tmp_path``, so /run is left alone)."""
    (tmp_path / "Corefile.base").write_text(
        "cluster.local:53 {\n    errors\n    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__\n"
        f"    forward . __PILLAR__CLUSTER__DNS__:{up.port} {{\n            force_tcp\n    }}\n}}\n"
        ".:53 {\n    errors\n    cache 30\n    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__\n"
        f"    forward . __PILLAR__UPSTREAM__SERVERS__\n{extra}}}\n")
    cm = tmp_path / "kube-dns"
    cm.mkdir(exist_ok=True)
    (cm / "upstreamNameservers").write_text(f'["{up.addr}"]')
    if stub is not None:
        (cm / "stubDomains").write_text(f'{{"acme.local": ["{stub.addr}"]}}')
    return ["-conf", str(tmp_path / "Corefile"), "-basecorefile", str(tmp_path / "Corefile.base"),
            "-kubednscm", str(cm), "-upstreamsvc", "kube-dns-upstream",
            "-lockfile", str(lock or tmp_path / "node.lock")]


ENV = {"KUBE_DNS_UPSTREAM_SERVICE_HOST": "127.0.0.1"}


def ask(ns: str, ip: str, name: str, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    if tcp:
        return in_ns(ns, lambda: dns.query.tcp(q, ip, port=53, timeout=3))
    return in_ns(ns, lambda: dns.query.udp(q, ip, port=53, timeout=3))


