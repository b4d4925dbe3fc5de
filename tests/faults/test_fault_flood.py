"""Bounded work under a flood of unique names while the upstream is silent.

linkdns caps the queries in flight per listener (``-max-inflight``, default 1024): a UDP
query over the cap is dropped and counted (``linkdns_dropped_queries_total{reason="flood"}``),
a TCP one answered REFUSED. Cache hits keep being answered, and once the upstream's timeouts
have run out everything is back to normal by itself."""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest
from daemon import Daemon
from fakeupstream import Drop, FakeUpstream, Hold
from faultlib import blast, blast_tcp, corefile, rcodes
from harness import Running

# A separate process sends the flood, so the GIL of this one (which times the hits) is free.
FLOOD = r"""
import socket, struct, sys, time
port, n, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.setblocking(False)
got = 0
def drain():
    global got
    while True:
        try:
            s.recv(512)
        except BlockingIOError:
            return
        got += 1
t0 = time.monotonic()
for i in range(n):
    while i > (time.monotonic() - t0) * rate:
        drain()
        time.sleep(0.001)
    name = b"\x08" + b"%08d" % i + b"\x05flood\x07example\x00"
    s.sendto(struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01",
             ("127.0.0.1", port))
print(time.monotonic() - t0, flush=True)
quiet = time.monotonic()
while time.monotonic() - quiet < float(sys.argv[4]):
    before = got
    drain()
    if got > before:
        quiet = time.monotonic()
    time.sleep(0.01)
# replies the kernel dropped at this socket (its buffer full): linkdns did answer them
me = s.getsockname()[1]
lost = sum(int(f.split()[-1]) for f in open("/proc/net/udp").read().splitlines()[1:]
           if int(f.split()[1].split(":")[1], 16) == me)
print(got, lost, flush=True)
"""


def hit_latencies(port: int, names: list[str], n: int) -> list[float]:
    """Round trips of ``n`` sequential cache hits, in seconds."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    out = []
    wires = [dns.message.make_query(nm, "A").to_wire() for nm in names]
    try:
        for i in range(n):
            w = wires[i % len(wires)]
            t0 = time.perf_counter()
            s.sendto(w, ("127.0.0.1", port))
            r = s.recv(512)
            out.append(time.perf_counter() - t0)
            assert r[:2] == w[:2] and r[3] & 0xF == 0
            time.sleep(0.002)
    finally:
        s.close()
    return out


def udp_kernel_drops(port: int) -> int:
    """Datagrams the kernel dropped on the UDP socket bound to ``port`` (/proc/net/udp)."""
    total = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port:
            total += int(f[-1])
    return total


def test_flood_of_unique_names_with_a_silent_upstream(tmp_path: Path, up: FakeUpstream) -> None:
    n, rate = 20_000, 5_000.0
    up.handler = lambda q, p: Drop() if "flood" in q.question[0].name.to_text() else None
    body = f"    cache 300\n    forward . {up.addr} {{\n        query_timeout 2s\n    }}"
    with Daemon(tmp_path, body) as d:
        hits = [f"hit{i}.example." for i in range(20)]
        for _ in range(3):  # miss, hit, memoized hit
            assert rcodes(blast(d.port, hits)) == {dns.rcode.NOERROR: 20}
        before = hit_latencies(d.port, hits, 300)
        rss_before = d.status_kib("VmRSS")

        flood = subprocess.Popen([sys.executable, "-c", FLOOD, str(d.port), str(n), str(rate),
                                  "3"], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)  # the cap is reached within the first ~0.2 s
            during = hit_latencies(d.port, hits, 300)  # ~1.5 s of the 4 s flood
            inflight = d.metric("linkdns_queries_in_flight")
            out, _ = flood.communicate(timeout=40)
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.wait()
        send_secs, got, client_drops = (float(x) for x in out.split())
        answered = got + client_drops
        assert send_secs > 3.0  # the hits above were timed while the flood lasted
        peak = d.status_kib("VmHWM")
        assert peak < 200 * 1024, f"peak RSS {peak / 1024:.0f} MiB"

        # bounded: no more than the cap in flight, the excess counted, nothing lost
        assert 0 < inflight <= 1024
        dropped = d.metric("linkdns_dropped_queries_total", reason="flood")
        kernel = udp_kernel_drops(d.port)
        assert dropped > 0
        assert answered + dropped + kernel == n, (answered, dropped, kernel)

        # hits: well under a millisecond of extra delay while the flood lasted
        extra_ms = (statistics.median(during) - statistics.median(before)) * 1000
        assert extra_ms < 0.5, (statistics.median(before), statistics.median(during))

        # back to normal by itself: nothing in flight, new names answered
        deadline = time.monotonic() + 10
        while d.metric("linkdns_queries_in_flight") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.metric("linkdns_queries_in_flight") == 0
        res = blast(d.port, [f"after{i}.example." for i in range(50)])
        assert rcodes(res) == {dns.rcode.NOERROR: 50}
        print(f"\nflood: RSS {rss_before / 1024:.1f} MiB before, peak {peak / 1024:.1f} MiB; "
              f"in flight {inflight:.0f}; {answered:.0f} answered ({client_drops:.0f} of the "
              f"replies dropped by the client's kernel), {dropped:.0f} dropped "
              f"(flood), {kernel} dropped by the kernel; hit median "
              f"{statistics.median(before) * 1e3:.3f} -> {statistics.median(during) * 1e3:.3f} ms"
              f", p99 {sorted(before)[296] * 1e3:.3f} -> {sorted(during)[296] * 1e3:.3f} ms")


@pytest.fixture
def capped(up: FakeUpstream) -> Iterator[Running]:
    srv = Running(corefile(up.addr, forward="read_timeout 5s\n        query_timeout 5s"))
    srv.server.max_inflight = 8
    with srv:
        yield srv


def test_over_the_cap_udp_is_dropped_and_counted_tcp_refused(
        capped: Running, up: FakeUpstream) -> None:
    gate = threading.Event()
    up.handler = lambda q, p: Hold(gate)
    ln = next(iter(capped.server.listeners.values()))
    res: list[object] = []
    t = threading.Thread(target=lambda: res.extend(
        blast(capped.port, [f"q{i}.example." for i in range(20)], timeout=1.5)))
    t.start()
    up.wait_for(8)
    deadline = time.monotonic() + 2
    while capped.server.stats.drops.get((ln.name, "flood"), 0) < 12 \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ln.inflight == 8
    assert capped.server.stats.drops.get((ln.name, "flood")) == 12
    tcp = blast_tcp(capped.port, ["t.example."], timeout=2)
    assert rcodes(tcp) == {dns.rcode.REFUSED: 1}
    gate.set()
    t.join(6)
    assert rcodes(res) == {dns.rcode.NOERROR: 8, -1: 12}  # type: ignore[arg-type]
    assert ln.inflight == 0
    assert rcodes(blast(capped.port, [f"n{i}.example." for i in range(8)])) == {
        dns.rcode.NOERROR: 8}


def test_max_inflight_flag_sets_the_cap(tmp_path: Path, up: FakeUpstream) -> None:
    up.handler = lambda q, p: Drop()
    body = f"    forward . {up.addr} {{\n        read_timeout 2s\n    }}"
    with Daemon(tmp_path, body, "-max-inflight", "4", "-drain", "0.2") as d:
        res = blast(d.port, [f"c{i}.example." for i in range(10)], timeout=0.5)
        assert rcodes(res) == {-1: 10}  # type: ignore[dict-item]
        assert d.metric("linkdns_queries_in_flight") == 4
        assert d.metric("linkdns_dropped_queries_total", reason="flood") == 6
