#!/usr/bin/env python3
"""Soak: linkdns under mixed load for a long while, with loss, latency and RSS over time.

    python bench/soak.py [--duration 600] [--interval 10] [--out bench/out] [--chart bench/soak.png]

One linkdns daemon (``cache``, ``forward``, ``prometheus``) in front of a flapping upstream
(this script run with ``--upstream PORT``, its own process). Load, all at once, on 127.0.0.1:

* ``hit``  - 200 names asked again and again over UDP (answered from cache);
* ``miss`` - a name never asked before, every query (forwarded, then cached until evicted);
* ``nx``   - NXDOMAIN: a trickle, and every ``--storm-every`` s a storm of unique names in 1 s
  (what an ``ndots:5`` search list does);
* ``flap`` - 10 names with TTL 1 whose answer alternates between A and NODATA every 5 s;
* ``tcp``  - TCP clients: pipelined hits and misses, a new connection every 100 queries.

The upstream cycles every 60 s: 40 s answering, 10 s SERVFAIL for everything, 10 s silent.
Every query is waited for up to ``--timeout`` s (longer than forward's 5 s query timeout):
a query with no reply by then is lost. Each interval reports queries sent, answered, lost,
latency percentiles per kind and the daemon's RSS (``/proc/PID/status`` VmRSS), plus
``linkdns_queries_in_flight`` and ``linkdns_dropped_queries_total`` from /metrics.
Bounded: the load stops after ``--duration`` s, the whole run after duration + 120 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

CYCLE, OK_FOR, SERVFAIL_FOR = 60.0, 40.0, 10.0  # upstream phases (the rest: silent)
KINDS = ("hit", "miss", "nx", "flap", "tcp")


# --------------------------------------------------------------------------- the upstream


def _question(data: bytes) -> tuple[str, int] | None:
    """(lowercased name, end offset of the question) of a query, or None."""
    if len(data) < 12:
        return None
    off, labels = 12, []
    while off < len(data):
        n = data[off]
        if n == 0:
            return ".".join(labels).lower() + ".", off + 5
        if n > 63:
            return None
        labels.append(data[off + 1 : off + 1 + n].decode("ascii", "replace"))
        off += n + 1
    return None


def _soa_rr(ttl: int = 60) -> bytes:
    """The zone's SOA, with ``ttl`` as its TTL and MINIMUM (the negative TTL)."""
    rdata = b"\x02ns\x04soak\x00\x0ahostmaster\x04soak\x00" + struct.pack("!IIIII", 1, 3600,
                                                                        600, 86400, ttl)
    return b"\x04soak\x00" + struct.pack("!HHIH", 6, 1, ttl, len(rdata)) + rdata


def upstream_reply(data: bytes, now: float, start: float) -> bytes | None:
    """What the flapping upstream sends for ``data`` at ``now`` (None: nothing)."""
    q = _question(data)
    if q is None:
        return None
    name, end = q
    phase = (now - start) % CYCLE
    if phase >= OK_FOR + SERVFAIL_FOR:
        return None  # silent
    head = data[:2] + struct.pack("!HHHHH", 0x8180 | (data[2] & 1) << 8, 1, 0, 0, 0)
    question = data[12:end]
    if phase >= OK_FOR:
        return head[:3] + bytes([0x82]) + head[4:] + question  # SERVFAIL
    qtype = struct.unpack("!H", data[end - 4 : end - 2])[0]
    if name.endswith(".nx.soak.") or qtype != 1:
        rc = 3 if name.endswith(".nx.soak.") else 0
        return (head[:3] + bytes([0x80 | rc]) + struct.pack("!HHHH", 1, 0, 1, 0) + question
                + _soa_rr())
    ttl = 300
    if name.endswith(".flap.soak."):
        ttl = 1
        if int(now - start) // 5 % 2:  # NODATA, negative TTL 1
            return head[:4] + struct.pack("!HHHH", 1, 0, 1, 0) + question + _soa_rr(1)
    h = sum(name.encode()) & 0xFF
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + bytes([192, 0, 2, h])
    return head[:4] + struct.pack("!HHHH", 1, 1, 0, 0) + question + rr


class _UpstreamProto(asyncio.DatagramProtocol):
    def __init__(self, start: float) -> None:
        self.start = start
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        out = upstream_reply(data, time.monotonic(), self.start)
        if out is not None:
            self.transport.sendto(out, addr)


async def run_upstream(port: int, lifetime: float) -> None:
    """The flapping upstream on UDP and TCP (forward asks over TCP for TCP clients)."""
    loop = asyncio.get_running_loop()
    start = time.monotonic()

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
                out = upstream_reply(await reader.readexactly(n), time.monotonic(), start)
                if out is not None:
                    writer.write(struct.pack("!H", len(out)) + out)
        except (asyncio.IncompleteReadError, OSError):
            writer.close()

    await loop.create_datagram_endpoint(lambda: _UpstreamProto(start),
                                        local_addr=(bl.LOOPBACK, port))
    server = await asyncio.start_server(conn, bl.LOOPBACK, port)
    async with server:
        await asyncio.sleep(lifetime)


# --------------------------------------------------------------------------- the load


@dataclass
class Cell:
    """One (interval, kind): queries sent, answered (latencies), lost, rcodes."""

    sent: int = 0
    lat: list[float] = field(default_factory=list)
    lost: int = 0
    rcodes: dict[int, int] = field(default_factory=dict)


class Load:
    def __init__(self, port: int, interval: float, timeout: float) -> None:
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.t0 = time.monotonic()
        self.cells: dict[tuple[int, str], Cell] = {}
        self.unexpected = 0
        self.counter = 0

    def cell(self, slot: int, kind: str) -> Cell:
        c = self.cells.get((slot, kind))
        if c is None:
            c = self.cells[(slot, kind)] = Cell()
        return c

    def slot(self) -> int:
        return int((time.monotonic() - self.t0) // self.interval)

    def unique(self, zone: str) -> str:
        self.counter += 1
        return f"u{self.counter}-{int(self.t0)}.{zone}.soak."


class UdpClient(asyncio.DatagramProtocol):
    """One socket; queries keyed by ID (16 bits: fine below 65536 in ``timeout`` s)."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.pending: dict[int, tuple[float, int, str]] = {}
        self.next_id = 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, name: str, kind: str) -> None:
        self.next_id = (self.next_id + 1) & 0xFFFF
        qid = self.next_id
        old = self.pending.pop(qid, None)
        if old is not None:
            self.load.cell(old[1], old[2]).lost += 1
        self.pending[qid] = (time.monotonic(), self.load.slot(), kind)
        self.load.cell(self.load.slot(), kind).sent += 1
        self.transport.sendto(bl.build_query(name, "A", qid), (bl.LOOPBACK, self.load.port))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 12:
            self.load.unexpected += 1
            return
        p = self.pending.pop(struct.unpack("!H", data[:2])[0], None)
        if p is None:
            self.load.unexpected += 1
            return
        c = self.load.cell(p[1], p[2])
        c.lat.append(time.monotonic() - p[0])
        rc = data[3] & 0xF
        c.rcodes[rc] = c.rcodes.get(rc, 0) + 1

    def expire(self, now: float) -> None:
        for qid, (t, slot, kind) in list(self.pending.items()):
            if now - t > self.load.timeout:
                del self.pending[qid]
                self.load.cell(slot, kind).lost += 1


async def paced(rate: float, until: float, fn: Any) -> None:
    """Call ``fn()`` ``rate`` times a second until ``until`` (monotonic)."""
    t0 = time.monotonic()
    n = 0
    while (now := time.monotonic()) < until:
        due = int((now - t0) * rate)
        while n < due:
            fn()
            n += 1
        await asyncio.sleep(0.01)


async def tcp_client(load: Load, rate: float, until: float, hits: list[str]) -> None:
    i = 0
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(bl.LOOPBACK, load.port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        pending: dict[int, tuple[float, int]] = {}
        done = asyncio.Event()  # all sent and all answered (or the connection gone)
        sent_all = asyncio.Event()

        async def read(reader: asyncio.StreamReader = reader,
                       pending: dict[int, tuple[float, int]] = pending,
                       done: asyncio.Event = done, sent_all: asyncio.Event = sent_all
                       ) -> None:
            while True:
                try:
                    n = struct.unpack("!H", await reader.readexactly(2))[0]
                    data = await reader.readexactly(n)
                except (asyncio.IncompleteReadError, OSError):
                    done.set()
                    return
                p = pending.pop(struct.unpack("!H", data[:2])[0], None)
                if p is None:
                    load.unexpected += 1
                    continue
                c = load.cell(p[1], "tcp")
                c.lat.append(time.monotonic() - p[0])
                c.rcodes[data[3] & 0xF] = c.rcodes.get(data[3] & 0xF, 0) + 1
                if not pending and sent_all.is_set():
                    done.set()

        rt = asyncio.ensure_future(read())
        for qid in range(1, 101):
            if time.monotonic() >= until:
                break
            i += 1
            name = hits[i % len(hits)] if i % 2 else load.unique("tcp")
            pending[qid] = (time.monotonic(), load.slot())
            load.cell(load.slot(), "tcp").sent += 1
            q = bl.build_query(name, "A", qid)
            writer.write(struct.pack("!H", len(q)) + q)
            await asyncio.sleep(1 / rate)
        sent_all.set()
        if not pending:
            done.set()
        try:
            await asyncio.wait_for(done.wait(), load.timeout)
        except TimeoutError:
            pass
        rt.cancel()
        for _qid, (_t, slot) in pending.items():
            load.cell(slot, "tcp").lost += 1
        pending.clear()
        writer.close()


async def run_load(args: argparse.Namespace, port: int, sample: Any) -> Load:
    load = Load(port, args.interval, args.timeout)
    loop = asyncio.get_running_loop()
    until = load.t0 + args.duration
    clients: dict[str, UdpClient] = {}
    for kind in ("hit", "miss", "nx", "flap"):
        _, proto = await loop.create_datagram_endpoint(lambda: UdpClient(load),
                                                       remote_addr=(bl.LOOPBACK, port))
        clients[kind] = proto
    hits = [f"h{i}.hit.soak." for i in range(200)]
    flaps = [f"f{i}.flap.soak." for i in range(10)]
    state = {"h": 0, "f": 0}

    def hit() -> None:
        state["h"] += 1
        clients["hit"].send(hits[state["h"] % len(hits)], "hit")

    def flap() -> None:
        state["f"] += 1
        clients["flap"].send(flaps[state["f"] % len(flaps)], "flap")

    async def storms() -> None:
        while time.monotonic() + 1 < until:
            await asyncio.sleep(args.storm_every)
            await paced(args.storm_size, min(until, time.monotonic() + 1.0),
                        lambda: clients["nx"].send(load.unique("nx"), "nx"))

    async def sampler() -> None:
        k = 0
        while time.monotonic() < until + args.timeout:
            k += 1
            await asyncio.sleep(max(0.0, load.t0 + k * args.interval - time.monotonic()))
            now = time.monotonic()
            for c in clients.values():
                c.expire(now)
            await loop.run_in_executor(None, sample, k - 1)

    tasks = [
        paced(args.hit_rate, until, hit),
        paced(args.miss_rate, until, lambda: clients["miss"].send(load.unique("miss"), "miss")),
        paced(args.nx_rate, until, lambda: clients["nx"].send(load.unique("nx"), "nx")),
        paced(args.flap_rate, until, flap),
        storms(),
        *(tcp_client(load, args.tcp_rate, until, hits) for _ in range(args.tcp_clients)),
    ]
    samp = asyncio.ensure_future(sampler())
    await asyncio.gather(*tasks)
    await asyncio.sleep(args.timeout + 0.5)
    now = time.monotonic() + args.timeout + 1
    for c in clients.values():
        c.expire(now)
    samp.cancel()
    return load


# --------------------------------------------------------------------------- report


def pct(vals: list[float], p: float) -> float | None:
    v = bl.percentile(sorted(vals), p)
    return None if v is None else round(v * 1000, 3)


def summarize(load: Load, samples: dict[int, dict[str, Any]]) -> dict[str, Any]:
    slots = sorted({s for s, _ in load.cells})
    rows = []
    for s in slots:
        row: dict[str, Any] = {"t": round((s + 1) * load.interval), **samples.get(s, {})}
        allc = Cell()
        for kind in KINDS:
            c = load.cells.get((s, kind), Cell())
            allc.sent += c.sent
            allc.lost += c.lost
            allc.lat += c.lat
            for rc, n in c.rcodes.items():
                allc.rcodes[rc] = allc.rcodes.get(rc, 0) + n
            row[kind] = {"sent": c.sent, "lost": c.lost, "p50_ms": pct(c.lat, 50),
                         "p99_ms": pct(c.lat, 99),
                         "rcodes": {bl.RCODES.get(k, str(k)): v for k, v in c.rcodes.items()}}
        row["all"] = {"sent": allc.sent, "lost": allc.lost, "answered": len(allc.lat),
                      "p50_ms": pct(allc.lat, 50), "p95_ms": pct(allc.lat, 95),
                      "p99_ms": pct(allc.lat, 99), "max_ms": pct(allc.lat, 100),
                      "rcodes": {bl.RCODES.get(k, str(k)): v for k, v in allc.rcodes.items()}}
        rows.append(row)
    total = {k: {"sent": sum(c.sent for (_, kk), c in load.cells.items() if kk == k),
                 "lost": sum(c.lost for (_, kk), c in load.cells.items() if kk == k),
                 "p50_ms": pct([x for (_, kk), c in load.cells.items() if kk == k for x in c.lat],
                               50),
                 "p99_ms": pct([x for (_, kk), c in load.cells.items() if kk == k for x in c.lat],
                               99)}
             for k in KINDS}
    return {"rows": rows, "total": total, "unexpected_replies": load.unexpected}


def render_md(res: dict[str, Any]) -> str:
    out = ["| t (s) | sent | lost | p50 ms | p95 ms | p99 ms | hit p99 ms | RSS MiB | in flight "
           "| dropped | SERVFAIL |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        a = r["all"]
        out.append(f"| {r['t']} | {a['sent']} | {a['lost']} | {a['p50_ms']} | {a['p95_ms']} | "
                   f"{a['p99_ms']} | {r['hit']['p99_ms']} | {r.get('rss_mib')} | "
                   f"{r.get('in_flight')} | {r.get('dropped')} | {a['rcodes'].get('SERVFAIL', 0)} |")
    out += ["", "| kind | sent | lost | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for k, t in res["total"].items():
        out.append(f"| {k} | {t['sent']} | {t['lost']} | {t['p50_ms']} | {t['p99_ms']} |")
    return "\n".join(out)


def write_chart(res: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no chart"
    rows = res["rows"]
    t = [r["t"] for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
        ax1.plot(t, [r["all"][key] for r in rows], style, label=f"all {key[:3]}")
        ax1.plot(t, [r["hit"][key] for r in rows], style, label=f"hits {key[:3]}")
    ax1.set_yscale("log")
    ax1.set_ylabel("latency (ms)")
    ax1.legend(fontsize=8, ncol=2)
    ax2.plot(t, [r.get("rss_mib") for r in rows], color="tab:red")
    ax2.set_ylabel("linkdns RSS (MiB)")
    ax2.set_ylim(bottom=0)
    ax3.bar(t, [r["all"]["lost"] for r in rows], width=res.get("interval", 10) * 0.8,
            label="lost")
    ax3.plot(t, [r["all"]["rcodes"].get("SERVFAIL", 0) for r in rows], color="tab:orange",
             label="SERVFAIL replies")
    ax3.set_ylabel("queries per interval")
    ax3.set_xlabel("time (s)")
    ax3.legend(fontsize=8)
    fig.suptitle("linkdns soak: mixed load, flapping upstream")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return f"chart: {path}"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", type=int, help=argparse.SUPPRESS)  # internal: run the upstream
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    p.add_argument("--interval", type=float, default=10.0, help="report interval (s)")
    p.add_argument("--timeout", type=float, default=8.0, help="a query is lost after this (s)")
    p.add_argument("--hit-rate", type=float, default=300.0)
    p.add_argument("--miss-rate", type=float, default=40.0)
    p.add_argument("--nx-rate", type=float, default=10.0)
    p.add_argument("--flap-rate", type=float, default=20.0)
    p.add_argument("--storm-every", type=float, default=30.0)
    p.add_argument("--storm-size", type=float, default=400.0, help="NXDOMAIN queries per storm")
    p.add_argument("--tcp-clients", type=int, default=2)
    p.add_argument("--tcp-rate", type=float, default=20.0, help="queries/s per TCP client")
    p.add_argument("--python", default=sys.executable, help="interpreter for -m linkdns")
    p.add_argument("--out", default=str(bl.BENCH_DIR / "out"))
    p.add_argument("--chart", default="", help="PNG path (default: OUT/soak.png)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.upstream:
        asyncio.run(run_upstream(args.upstream, args.duration + 300))
        return 0
    bl.install_signal_handlers(args.duration + 2 * args.timeout + 120)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="linkdns-soak-"))
    reg = bl.ProcessRegistry(work)
    ports = bl.PortAllocator(25353)
    dns_port, up_port, m_port = ports.take(), ports.take(), ports.take()
    try:
        reg.start("upstream", [sys.executable, __file__, "--upstream", str(up_port),
                               "--duration", str(args.duration)])
        corefile = work / "Corefile"
        corefile.write_text(f""".:{dns_port} {{
    bind 127.0.0.1
    prometheus 127.0.0.1:{m_port}
    errors
    cache 300
    forward . 127.0.0.1:{up_port}
}}
""")
        proc = reg.start("linkdns", [args.python, "-m", "linkdns", "-conf", str(corefile),
                                     "-quiet"], env=bl.linkdns_env(True))
        err = bl.wait_ready(dns_port, proc, 20, "ready.hit.soak")
        if err:
            bl.log(f"linkdns: {err}\n{proc.output_tail()}")
            return 1
        samples: dict[int, dict[str, Any]] = {}

        def sample(slot: int) -> None:
            mem = bl.group_memory_kib(proc.pid)
            text = bl.fetch_metrics(m_port) or ""
            inflight = dropped = 0.0
            for line in text.splitlines():
                if line.startswith("linkdns_queries_in_flight{"):
                    inflight += float(line.split()[-1])
                elif line.startswith("linkdns_dropped_queries_total{"):
                    dropped += float(line.split()[-1])
            samples[slot] = {"rss_mib": round(mem["rss_kib"] / 1024, 1),
                             "in_flight": inflight, "dropped": dropped}
            bl.log(f"t={(slot + 1) * args.interval:.0f}s rss={mem['rss_kib'] / 1024:.1f} MiB "
                   f"in_flight={inflight:.0f} dropped={dropped:.0f}")

        bl.log(f"soak: {args.duration:.0f} s of load on 127.0.0.1:{dns_port}")
        load = asyncio.run(run_load(args, dns_port, sample))
        res = summarize(load, samples)
        res.update(interval=args.interval, duration=args.duration, alive=proc.alive(),
                   args={k: v for k, v in vars(args).items() if k not in ("python", "upstream")},
                   started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (out / f"soak-{stamp}.json").write_text(json.dumps(res, indent=1))
        md = render_md(res)
        (out / f"soak-{stamp}.md").write_text(md + "\n")
        print(md)
        bl.log(write_chart(res, Path(args.chart) if args.chart else out / "soak.png"))
        lost = sum(t["lost"] for t in res["total"].values())
        sent = sum(t["sent"] for t in res["total"].values())
        bl.log(f"sent {sent}, lost {lost}, unexpected {load.unexpected}, "
               f"daemon alive: {proc.alive()}")
        return 0 if proc.alive() else 1
    finally:
        bl.clean_up(reg, work, keep=False)


if __name__ == "__main__":
    sys.exit(main())
