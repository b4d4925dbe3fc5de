#!/usr/bin/env python3
"""How long ``cache { snapshot FILE }`` takes to save and to load back a full cache, and what it
saves the upstream at a restart.

    python bench/snapshot.py [--entries 40000] [--rounds 5] [--out bench/out]
    python bench/snapshot.py --restart [--names 2000] [--rate 500] [--out bench/out]

A cache (the real Cache object, no sockets) is filled through the miss path (``Cache.store_reply``)
with ENTRIES replies shaped like a node's traffic: 3/4 one-A-record answers with the zone's NS
in authority, 1/4 NXDOMAIN with an SOA (the search-path misses of a pod). Then, per round:
save (entries -> records -> file, fsync, rename) and load into an empty cache (read, digest,
decode, every record through the miss path's checks and ``store.put``). Reported: median and
worst of each (wall clock; the load's CPU time too, which a busy machine does not inflate),
the file size and bytes per entry. The load is what delays a restart: it runs
before the listeners open. See docs/plugins/cache.md (snapshot).

``--restart``: real processes on 127.0.0.1. A counting upstream (answers every A query, TTL
300), linkdns in front of it, and a client asking NAMES names round-robin at RATE q/s (UDP,
1 s timeout, no retry) for the whole run. After the cache is warm the daemon gets SIGTERM, a
new one is started with the same command line as soon as it has exited (a plain stop-then-start),
and the client goes on for 10 s. Once without and once with ``snapshot``. Reported per case:
the queries the upstream got from the new instance in its first 10 s, the client's failed
(timed-out) queries and the longest time it went without an answer.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

from linkdns import wire
from linkdns.clock import Clock
from linkdns.plugins.cache import Cache, CacheConfig
from linkdns.plugins.cache.setup import ClassConfig
from linkdns.request import Request

PEER = ("127.0.0.1", 5353)
_RR = struct.Struct(">HHIH")


def answer(qname: bytes, i: int) -> tuple[bytes, bytes]:
    q = wire.make_query(qname, wire.T_A, i & 0xFFFF)
    zone = wire.text_to_name("cluster.local.")
    ns = wire.text_to_name("ns.example.test.")
    a = b"\xc0\x0c" + _RR.pack(wire.T_A, 1, 300, 4) + bytes((10, i >> 16 & 255, i >> 8 & 255, i & 255))
    auth = zone + _RR.pack(2, 1, 300, len(ns)) + ns
    head = struct.pack(">HHHHHH", i & 0xFFFF, 0x8580, 1, 1, 1, 0)
    return q, head + q[12:] + a + auth


def nxdomain(qname: bytes, i: int) -> tuple[bytes, bytes]:
    q = wire.make_query(qname, wire.T_A, i & 0xFFFF)
    zone = wire.text_to_name("cluster.local.")
    mname = wire.text_to_name("ns.dns.cluster.local.")
    rname = wire.text_to_name("hostmaster.cluster.local.")
    rdata = mname + rname + struct.pack(">IIIII", 1, 7200, 1800, 86400, 30)
    soa = zone + _RR.pack(wire.T_SOA, 1, 30, len(rdata)) + rdata
    head = struct.pack(">HHHHHH", i & 0xFFFF, 0x8583, 1, 0, 1, 0)
    return q, head + q[12:] + soa


def new_cache(path: str, cap: int) -> Cache:
    cfg = CacheConfig(success=ClassConfig(cap, 3600), denial=ClassConfig(cap, 1800),
                      snapshot=path)
    return Cache(cfg, zones=["."], clock=Clock())


def fill(c: Cache, n: int) -> None:
    for i in range(n):
        if i % 4 == 3:
            name = wire.text_to_name(f"pod-{i}.default.svc.cluster.local.")
            qw, rw = nxdomain(name, i)
        else:
            name = wire.text_to_name(f"pod-{i}.ns.svc.cluster.local.")
            qw, rw = answer(name, i)
        st, q = wire.scan_query(qw)
        assert st == 0 and q is not None
        if c.store_reply(Request(q, PEER, "udp"), rw, False) is None:
            raise SystemExit(f"entry {i} was not stored")


def load_bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/cache.snap"
        src = new_cache(path, args.entries)
        fill(src, args.entries)
        assert src.snapshot is not None
        saves, loads, load_cpu = [], [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            written = src.snapshot.save()
            saves.append(time.perf_counter() - t0)
            assert written == args.entries, written
            dst = new_cache(path, args.entries)
            assert dst.snapshot is not None
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            counts = dst.snapshot.load()
            loads.append(time.perf_counter() - t0)
            load_cpu.append(time.process_time() - c0)
            assert counts == (args.entries, 0, 0), counts
            assert len(dst.store) == args.entries
        size = Path(path).stat().st_size
    res = {
        "entries": args.entries,
        "rounds": args.rounds,
        "save_ms_median": round(statistics.median(saves) * 1000, 1),
        "save_ms_max": round(max(saves) * 1000, 1),
        "load_ms_median": round(statistics.median(loads) * 1000, 1),
        "load_ms_max": round(max(loads) * 1000, 1),
        "load_cpu_ms_median": round(statistics.median(load_cpu) * 1000, 1),
        "file_bytes": size,
        "bytes_per_entry": round(size / args.entries, 1),
        "python": sys.version.split()[0],
    }
    print(f"snapshot of {args.entries} entries ({size / 1e6:.1f} MB, "
          f"{res['bytes_per_entry']} B/entry), {args.rounds} rounds:")
    print(f"  save  median {res['save_ms_median']} ms   worst {res['save_ms_max']} ms")
    print(f"  load  median {res['load_ms_median']} ms   worst {res['load_ms_max']} ms   "
          f"(CPU time, median: {res['load_cpu_ms_median']} ms)")
    return res


# -- the restart scenario -------------------------------------------------------------------


class CountingUpstream:
    """Answers every query with one A record (TTL 300) and notes when each one came."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((bl.LOOPBACK, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            if len(data) < 17:
                continue
            self.times.append(time.monotonic())
            end = wire.skip_name(data, 12) + 4  # the question (any OPT is dropped)
            head = data[:2] + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00"
            rr = b"\xc0\x0c" + _RR.pack(wire.T_A, 1, 300, 4) + b"\xc0\x00\x02\x01"
            self.sock.sendto(head + data[12:end] + rr, peer)

    def between(self, t0: float, t1: float) -> int:
        return sum(1 for t in list(self.times) if t0 <= t < t1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class Client(asyncio.DatagramProtocol):
    """NAMES names round-robin at RATE q/s, 1 s timeout, no retry."""

    def __init__(self, port: int, names: list[bytes], rate: float) -> None:
        self.port = port
        self.names = names
        self.rate = rate
        self.sent: dict[int, float] = {}
        self.answers: list[float] = []
        self.failed = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) >= 12 and self.sent.pop(int.from_bytes(data[:2], "big"), None) is not None:
            self.answers.append(time.monotonic())

    def error_received(self, exc: Exception) -> None:
        pass

    async def run(self, until: asyncio.Event) -> None:
        assert self.transport is not None
        i = 0
        t0 = time.monotonic()
        while not until.is_set():
            now = time.monotonic()
            for qid, t in list(self.sent.items()):
                if now - t > 1.0:
                    del self.sent[qid]
                    self.failed += 1
            while i < (now - t0) * self.rate:
                qid = i & 0xFFFF
                if qid in self.sent:  # 65536 outstanding: count it as failed
                    del self.sent[qid]
                    self.failed += 1
                self.sent[qid] = now
                self.transport.sendto(wire.make_query(self.names[i % len(self.names)], 1, qid),
                                      (bl.LOOPBACK, self.port))
                i += 1
            await asyncio.sleep(0.005)
        await asyncio.sleep(1.05)
        self.failed += len(self.sent)

    def longest_gap(self, t0: float, t1: float) -> float:
        ts = [t0] + [t for t in self.answers if t0 <= t <= t1] + [t1]
        return max(b - a for a, b in itertools.pairwise(ts))


CASES = {
    "plain": "linkdns stop-then-start",
    "snap": "linkdns stop-then-start, snapshot",
    "unbound": "unbound stop-then-start",
}


async def restart_case(reg: bl.ProcessRegistry, work: Path, up: CountingUpstream,
                       case: str, args: argparse.Namespace) -> dict[str, Any]:
    port = bl.PortAllocator(20000 + (list(CASES).index(case) + 3) * 311).take()
    env: dict[str, str] | None = None
    if case == "unbound":
        unbound = bl.which("unbound")
        if unbound is None:
            raise bl.Abort(bl.missing_message("unbound"))
        conf = bl.render_unbound(None, work, port, up.port)
        cmd = [unbound, "-d", "-c", str(conf)]
    else:
        conf = work / f"Corefile-{case}"
        snap = f"\n        snapshot {work}/cache.snap" if case == "snap" else ""
        conf.write_text(f".:{port} {{\n    bind 127.0.0.1\n    cache {{\n        success "
                        f"{args.names * 2}{snap}\n    }}\n"
                        f"    forward . 127.0.0.1:{up.port}\n}}\n")
        cmd = [args.python, "-m", "linkdns", "-conf", str(conf)]
        env = bl.linkdns_env(True)
    old = reg.start(f"{case}-old", cmd, env)
    err = await asyncio.to_thread(bl.wait_ready, port, old, 30.0, "probe.example.")
    if err:
        raise bl.Abort(f"{case}: {err}\n{old.output_tail()}")
    names = [wire.text_to_name(f"name-{i}.bench.example.") for i in range(args.names)]
    loop = asyncio.get_running_loop()
    tr, client = await loop.create_datagram_endpoint(
        lambda: Client(port, names, args.rate), local_addr=(bl.LOOPBACK, 0))
    done = asyncio.Event()
    runner = asyncio.ensure_future(client.run(done))
    await asyncio.sleep(args.names / args.rate * 2 + 1)  # every name asked twice: warm
    t_stop = time.monotonic()
    await asyncio.to_thread(reg.stop, old, 20.0)
    t_start = time.monotonic()
    new = reg.start(f"{case}-new", cmd, env)
    await asyncio.sleep(10.0)
    done.set()
    await runner
    tr.close()
    reg.stop(new)
    t_end = t_start + 10.0
    return {
        "case": CASES[case],
        "upstream_queries_first_10s": up.between(t_start, t_end),
        "failed_queries": client.failed,
        "longest_gap_ms": round(client.longest_gap(t_stop - 1, t_end) * 1000),
        "stop_ms": round((t_start - t_stop) * 1000),
        "queries_sent": len(client.answers) + client.failed,
    }


def restart_bench(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="linkdns-snapbench-"))
    (work / "logs").mkdir()
    reg = bl.ProcessRegistry(work / "logs")
    up = CountingUpstream()
    bl.install_signal_handlers(360)
    cases = []
    try:
        for case in args.cases.split(","):
            cases.append(asyncio.run(restart_case(reg, work, up, case, args)))
    finally:
        up.close()
        bl.clean_up(reg, work, args.keep_workdir)
    print(f"restart, {args.names} names at {args.rate:.0f} q/s, 1 s timeout, no retry:")
    print(f"  {'case':34} {'upstream q, first 10 s':>22} {'failed':>7} {'longest gap':>12}"
          f" {'stop took':>10}")
    for c in cases:
        print(f"  {c['case']:34} {c['upstream_queries_first_10s']:>22} "
              f"{c['failed_queries']:>7} {c['longest_gap_ms']:>9} ms {c['stop_ms']:>7} ms")
    return {"names": args.names, "rate": args.rate, "cases": cases}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--entries", type=int, default=40000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--restart", action="store_true", help="the restart scenario instead")
    ap.add_argument("--names", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--cases", default="plain,snap,unbound",
                    help=f"restart cases, of {','.join(CASES)}")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.restart:
        res = restart_bench(args)
        (out / "snapshot-restart.json").write_text(json.dumps(res, indent=2) + "\n")
    else:
        res = load_bench(args)
        (out / "snapshot.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
