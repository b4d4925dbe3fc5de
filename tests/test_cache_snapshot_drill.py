"""Drill (d) of issue 12: a sequential restart with ``cache { snapshot FILE }``, real processes.

A linkdns daemon fills its cache with NAMES names from a FakeUpstream, is stopped with SIGTERM,
the upstream goes silent, and a new daemon starts with the same command line and Corefile.
As soon as ``/ready`` says ready, every name is asked once (1 s timeout, no retry): at least
95% must be answered from the cache, with their TTLs reduced by the time that passed, and the
upstream must see no query from the new daemon.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import dns.exception
import dns.rcode
from fakeupstream import Drop, FakeUpstream, a_records
from harness import free_port, http_get, query

from linkdns.plugins.cache import snapshot

PY = sys.executable
NAMES = 200
TTL = 300
ADDR = "192.0.2.1"


def start(conf: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PY, "-m", "linkdns", "-conf", str(conf), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_ready(p: subprocess.Popen[str], port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise AssertionError(f"linkdns exited: {p.communicate()[0]}")
        try:
            if http_get(port, "/ready", timeout=0.5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError("linkdns not ready")


def reap(p: subprocess.Popen[str]) -> None:
    """Kill ``p`` if it still runs and close its pipe."""
    if p.poll() is None:
        p.kill()
    p.communicate(timeout=20)


def stop(p: subprocess.Popen[str]) -> str:
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=20)
    assert p.returncode == 0, out
    return out


def test_a_restart_with_snapshot_answers_from_cache_with_the_upstream_silent(
        up: FakeUpstream, tmp_path: Path) -> None:
    dns_port, ready_port = free_port(), free_port()
    snap = tmp_path / "run" / "cache.snap"
    conf = tmp_path / "Corefile"
    conf.write_text(f".:{dns_port} {{\n bind 127.0.0.1\n ready 127.0.0.1:{ready_port}\n"
                    f" cache {{\n  snapshot {snap}\n }}\n forward . {up.addr}\n}}\n")
    names = [f"name-{i}.drill.example." for i in range(NAMES)]
    up.handler = lambda q, proto: a_records(q, 1, TTL, first=ADDR)

    old = start(conf)
    try:
        wait_ready(old, ready_port)
        filled = time.monotonic()
        for n in names:
            assert query(dns_port, n, timeout=2).rcode() == dns.rcode.NOERROR
        out = stop(old)
    finally:
        reap(old)
    assert f"saved {NAMES} entries to {snap}" in out
    assert len(up.queries) == NAMES

    up.handler = lambda q, proto: Drop()  # the upstream goes silent
    up.reset()
    time.sleep(2.0)  # so that the TTLs must have gone down
    new = start(conf)
    try:
        wait_ready(new, ready_port)
        hits = 0
        ttls: list[int] = []
        for n in names:
            try:
                r = query(dns_port, n, timeout=1.0)
            except dns.exception.Timeout:
                continue
            if r.rcode() == dns.rcode.NOERROR and r.answer and str(r.answer[0][0]) == ADDR:
                hits += 1
                ttls.append(r.answer[0].ttl)
        passed = time.monotonic() - filled
        out = stop(new)
    finally:
        reap(new)
    print(f"drill (d): {hits}/{NAMES} names answered from the snapshot, "
          f"TTLs {min(ttls)}..{max(ttls)} after {passed:.1f}s")
    assert hits >= 0.95 * NAMES
    assert up.queries == []  # not one miss reached the upstream
    # every TTL went down by at least the 2 s pause, and by no more than the time that passed
    assert max(ttls) <= TTL - 2
    assert min(ttls) >= TTL - int(passed) - 1
    assert f"restored {NAMES} entries from {snap} (0 expired, 0 skipped)" in out


def wait_dns(p: subprocess.Popen[str], port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise AssertionError(f"linkdns exited: {p.communicate()[0]}")
        try:
            query(port, "probe.drill.example.", timeout=0.3)
            return
        except dns.exception.Timeout:
            pass
    raise TimeoutError("linkdns does not answer")


def test_each_worker_saves_its_own_file(up: FakeUpstream, tmp_path: Path) -> None:
    port = free_port()
    snap = tmp_path / "cache.snap"
    conf = tmp_path / "Corefile"
    conf.write_text(f".:{port} {{\n bind 127.0.0.1\n cache {{\n  snapshot {snap}\n }}\n"
                    f" forward . {up.addr}\n}}\n")
    p = subprocess.Popen([PY, "-m", "linkdns", "-conf", str(conf), "-workers", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_dns(p, port)
        for i in range(20):
            query(port, f"w{i}.drill.example.", timeout=2)
        stop(p)
    finally:
        reap(p)
    assert sorted(f.name for f in tmp_path.glob("cache.snap*")) == ["cache.snap.0",
                                                                     "cache.snap.1"]
    keys: set[bytes] = set()
    for f in ("cache.snap.0", "cache.snap.1"):
        keys |= {k for k, *_ in snapshot.decode((tmp_path / f).read_bytes())[1]}
    assert {k[1:3] for k in keys} >= {b"w0", b"w1"} and len(keys) >= 21  # 20 names + probe


def test_a_start_that_fails_leaves_the_file_alone(up: FakeUpstream, tmp_path: Path) -> None:
    """A second instance that cannot bind (no hand-over) must not rewrite the first's file."""
    port = free_port()
    snap = tmp_path / "cache.snap"
    conf = tmp_path / "Corefile"
    conf.write_text(f".:{port} {{\n bind 127.0.0.1\n cache {{\n  snapshot {snap}\n }}\n"
                    f" forward . {up.addr}\n}}\n")
    first = start(conf)
    try:
        wait_dns(first, port)
        stop(first)
    finally:
        reap(first)
    before = snap.read_bytes()
    first = start(conf)
    try:
        wait_dns(first, port)
        second = start(conf, "-handover.socket", "none")  # the port is taken by ``first``
        out, _ = second.communicate(timeout=20)
        assert second.returncode == 1, out
        assert "restored 1 entries" in out
        assert snap.read_bytes() == before
    finally:
        reap(first)


def test_a_hand_over_successor_starts_with_the_old_instances_entries(
        up: FakeUpstream, tmp_path: Path) -> None:
    """Overlap: the old instance saves right before it passes its sockets, the successor
    loads that file in its start; the old one's stop then does not write again."""
    port = free_port()
    snap = tmp_path / "cache.snap"
    conf = tmp_path / "Corefile"
    conf.write_text(f".:{port} {{\n bind 127.0.0.1\n cache {{\n  snapshot {snap}\n }}\n"
                    f" forward . {up.addr}\n}}\n")
    ctl = str(tmp_path / "handover.sock")
    up.handler = lambda q, proto: a_records(q, 1, TTL, first=ADDR)
    old = start(conf, "-handover.socket", ctl)
    new: subprocess.Popen[str] | None = None
    try:
        wait_dns(old, port)
        for i in range(50):
            query(port, f"h{i}.drill.example.", timeout=2)
        assert not snap.exists()  # nothing saved yet: the old instance still runs
        up.handler = lambda q, proto: Drop()
        up.reset()
        new = start(conf, "-handover.socket", ctl)
        deadline = time.monotonic() + 20
        while not snap.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        old_out = stop(old)  # the successor serves on the same sockets from here on
        for i in range(50):
            r = query(port, f"h{i}.drill.example.", timeout=1.0)
            assert str(r.answer[0][0]) == ADDR
        new_out = stop(new)
    finally:
        reap(old)
        if new is not None:
            reap(new)
    assert up.queries == []
    assert old_out.count("saved 51 entries") == 1, old_out  # the hook's, not the stop's too
    assert "restored 51 entries" in new_out, new_out
