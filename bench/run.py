#!/usr/bin/env python3
"""linkdns throughput/latency benchmark against unbound and dnsmasq on loopback.

    python bench/run.py [--quick] [--duration S] [--out bench/out] [--servers linkdns,unbound,dnsmasq]

nsd is the authoritative upstream; every cache forwards to it. The load generator (dnsperf)
is pinned to one core, the cache under test to the other. Each (scenario, server) pair gets a
freshly started server, so caches and peak-RSS figures never leak between scenarios.
The numbers that mean something are the ratios between servers measured in the same run.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
import workingset as ws

SCENARIO_ORDER = ("hit1", "hit20", "miss", "ndots", *ws.NAMES, "hit40")
DEFAULT_SCENARIOS = ("hit1", "hit20", "miss", "ndots", *ws.NAMES)


@dataclass
class Check:
    name: str
    qtype: str
    rcode: int
    ancount: int | None = None
    need_soa: bool = False
    edns: bool = False


@dataclass
class Scenario:
    name: str
    description: str
    warm: bool
    unique: bool = False
    edns: bool = False
    checks: list[Check] = field(default_factory=list)
    qfile: Path | None = None
    count: int = 0
    #: the query file is dnsperf's binary format (-B): wire messages as clients send them
    binary: bool = False


@dataclass
class Ctx:
    args: argparse.Namespace
    tools: dict[str, str]
    registry: bl.ProcessRegistry
    workdir: Path
    peers: Path | None
    ports: dict[str, int]
    server_pin: list[str]
    client_pin: list[str]
    run_id: str
    deadline: float
    failed: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- scenarios


def build_scenarios(ctx: Ctx, names: list[str]) -> list[Scenario]:
    a = ctx.args
    rnd = random.Random(1)
    out: list[Scenario] = []
    for name in names:
        if name == "hit1":
            nx = max(1, round(a.hosts * 5 / 95))
            qs = [(f"host{k}.example.test", "A") for k in range(1, a.hosts + 1)]
            qs += [(f"nx{k}.example.test", "A") for k in range(1, nx + 1)]
            rnd.shuffle(qs)
            s = Scenario(
                name,
                f"warm cache; {a.hosts} names with 1 A record + {nx} NXDOMAIN names (5%), shuffled",
                warm=True,
                checks=[
                    Check("host1.example.test", "A", 0, 1),
                    Check("nx1.example.test", "A", 3, 0, need_soa=True),
                ],
            )
        elif name == "hit20":
            qs = [("big.example.test", "A")]
            s = Scenario(
                name,
                "warm cache; big.example.test, 20 A records per answer",
                warm=True,
                checks=[Check("big.example.test", "A", 0, 20)],
            )
        elif name == "hit40":
            qs = [("big40.example.test", "A")]
            s = Scenario(
                name,
                "warm cache; big40.example.test, 40 A records, queries with EDNS0 (bufsize 4096)",
                warm=True,
                edns=True,
                checks=[Check("big40.example.test", "A", 0, 40, edns=True)],
            )
        elif name == "miss":
            qs = []
            s = Scenario(
                name,
                "cold cache; every query is a never-asked name under *.wild.example.test "
                "(nsd answers from the wildcard), fresh names for every server",
                warm=False,
                unique=True,
                checks=[Check(f"check-{ctx.run_id}.wild.example.test", "A", 0, 1)],
            )
        elif name == "ndots":
            qs = []
            for k in range(1, a.ndots_hosts + 1):
                h = f"host{k}.example.test"
                qs += [
                    (f"{h}.default.svc.cluster.local", "A"),
                    (f"{h}.svc.cluster.local", "A"),
                    (f"{h}.cluster.local", "A"),
                    (h, "A"),
                ]
            s = Scenario(
                name,
                f"warm cache; pod search list (ndots:5): for {a.ndots_hosts} names, 3 NXDOMAIN "
                "lookups under cluster.local then the real name (75% NXDOMAIN)",
                warm=True,
                checks=[
                    Check("host1.example.test.default.svc.cluster.local", "A", 3, 0, need_soa=True),
                    Check("host1.example.test", "A", 0, 1),
                ],
            )
        elif ws.is_ws(name):
            qs = []
            s = Scenario(
                name,
                ws.describe(name),
                warm=True,
                binary=True,
                checks=[
                    Check("host1.example.test", "A", 0, 1, edns=ws.edns(name)),
                    Check("host2.example.test", "AAAA", 0, 1, edns=ws.edns(name)),
                    Check("host1.example.test", "AAAA", 0, 0, need_soa=True),
                ],
            )
            s.qfile, s.count = ws.write(name, ctx.workdir)
        else:
            raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(SCENARIO_ORDER)}")
        if qs:
            s.qfile = ctx.workdir / f"q-{name}.txt"
            s.count = bl.write_queries(s.qfile, qs)
        out.append(s)
    return out


def miss_file(ctx: Ctx, server: str, rnd: int, tag: str, count: int) -> Path:
    p = ctx.workdir / f"q-miss-{server}-{rnd}-{tag}.txt"
    prefix = f"{tag}{rnd}-{server}-{ctx.run_id}"
    bl.write_queries(p, ((f"{prefix}-{i}.wild.example.test", "A") for i in range(count)))
    return p


# --------------------------------------------------------------------------- measuring


class WindowSampler(threading.Thread):
    """Snapshots /proc/stat and the server's CPU at two offsets into the load run, so core
    utilisation covers the steady state only (not dnsperf start-up or its wait for late replies)."""

    def __init__(self, pgid: int, start_s: float, end_s: float) -> None:
        super().__init__(daemon=True)
        self.pgid, self.start_s, self.end_s = pgid, start_s, end_s
        self.snaps: list[tuple[float, dict[str, tuple[int, int, int]], float]] = []

    def run(self) -> None:
        t0 = time.monotonic()
        for off in (self.start_s, self.end_s):
            time.sleep(max(0.0, t0 + off - time.monotonic()))
            self.snaps.append((time.monotonic(), bl.cpu_times(), bl.group_cpu_seconds(self.pgid)))

    def result(self, server_cpus: str, client_cpus: str) -> dict[str, Any]:
        if len(self.snaps) < 2:
            return {}
        (ta, ca, pa), (tb, cb, pb) = self.snaps
        return {
            "server_core_pct": bl.busy_pct(ca, cb, server_cpus),
            "client_core_pct": bl.busy_pct(ca, cb, client_cpus),
            "steal_pct": bl.steal_pct(ca, cb),
            "server_proc_cpu_pct_steady": 100.0 * (pb - pa) / max(tb - ta, 1e-9),
        }


def start_server(ctx: Ctx, server: str) -> tuple[bl.Proc | None, bl.ServerLaunch, str | None]:
    a = ctx.args
    launch = bl.build_launch(
        server,
        workdir=ctx.workdir,
        port=ctx.ports[server],
        nsd_port=ctx.ports["nsd"],
        tools=ctx.tools,
        pin_prefix=ctx.server_pin,
        peers=ctx.peers,
        python=a.python,
        use_src=not a.no_src_path,
        corefile_text=bl.linkdns_single_corefile(
            ctx.ports["linkdns"], ctx.ports["nsd"], ctx.ports["metrics"]
        )
        if server == "linkdns"
        else None,
        metrics_port=ctx.ports["metrics"] if server == "linkdns" else None,
        start_timeout_s=a.start_timeout,
    )
    if server == "linkdns" and a.lagprobe:
        # the same daemon, started through bench/lagprobe.py (a loop-lag timer, GC and
        # run-queue records; see lagprobe.py)
        i = launch.cmd.index("-m")
        launch.cmd[i : i + 2] = [str(bl.BENCH_DIR / "lagprobe.py")]
        launch.env = dict(launch.env or os.environ, LAGPROBE_OUT=str(ctx.workdir / "lag.json"))
        (ctx.workdir / "lag.json").unlink(missing_ok=True)
    proc = ctx.registry.start(server, launch.cmd, env=launch.env, cwd=ctx.workdir)
    err = bl.wait_ready(launch.port, proc, launch.start_timeout_s)
    if err is not None:
        msg = f"{err}\n--- output tail ---\n{proc.output_tail()}"
        ctx.registry.stop(proc)
        return None, launch, msg
    return proc, launch, None


def run_checks(port: int, checks: list[Check]) -> list[str]:
    problems: list[str] = []
    for c in checks:
        ans = bl.query(port, c.name, c.qtype, timeout_s=1.0, edns=c.edns)
        if ans is None:
            problems.append(f"{c.name}: no answer")
            continue
        want = bl.RCODES.get(c.rcode, str(c.rcode))
        got = bl.RCODES.get(ans.rcode, str(ans.rcode))
        if ans.rcode != c.rcode:
            problems.append(f"{c.name}: rcode {got}, expected {want}")
        if c.ancount is not None and ans.ancount != c.ancount:
            problems.append(
                f"{c.name}: {ans.ancount} answers{' (TC)' if ans.tc else ''}, expected {c.ancount}"
            )
        if c.need_soa and ans.nscount < 1:
            problems.append(f"{c.name}: {want} without SOA in authority (not cacheable downstream)")
    return problems


def warm(ctx: Ctx, server: str, port: int, sc: Scenario) -> dict[str, Any]:
    a = ctx.args
    assert sc.qfile is not None
    info: dict[str, Any] = {"passes": 0, "lost": None}
    for attempt in range(1, 4):
        dur = sc.count / a.warm_rate * 1.5 + 3
        cmd = bl.dnsperf_cmd(
            ctx.tools["dnsperf"],
            ctx.client_pin,
            port,
            sc.qfile,
            dur,
            a.clients,
            a.outstanding,
            rate=a.warm_rate,
            once=True,
            edns=sc.edns,
            binary=sc.binary,
        )
        res, _ = bl.run_dnsperf(ctx.registry, f"warm-{server}", cmd, dur, 2.0)
        info["passes"], info["lost"] = attempt, res.lost
        if res.lost == 0 and res.completed >= sc.count:
            break
    return info


def latency_probe(
    ctx: Ctx, server: str, port: int, sc: Scenario, rnd: int, max_qps: float, pgid: int
) -> dict[str, Any]:
    """dnsperf -Q RATE -v for --latency-warmup + --latency-duration seconds; percentiles over
    the answers after the warm-up.

    dnsperf starts slowly (while fewer than -q queries were sent it sleeps on every other
    send) and then sends back to back until it is back on its -Q schedule: up to -q queries
    reach the server at once. Draining that burst takes (burst / (capacity - rate)), so its
    queries carry tens of ms of queueing that a steady RATE never causes, and with -q at 5%
    of the rate they are >1% of a 5 s probe: they used to *be* the p99. -v lines come in
    completion order, so the first RATE * warm-up answers are left out of the percentiles
    (kept as ``p99_with_warmup_ms``)."""
    a = ctx.args
    rate = a.latency_rate if a.latency_rate else a.latency_fraction * max_qps
    rate = max(50.0, rate)
    warmup = a.latency_warmup
    dur = a.latency_duration + warmup
    if sc.unique:
        qfile = miss_file(ctx, server, rnd, "lat", int(rate * dur * 1.2) + 100)
    else:
        assert sc.qfile is not None
        qfile = sc.qfile
    # near open loop: enough outstanding slots that a few slow answers (e.g. an upstream
    # retransmit after 1 s) do not throttle the send rate; capped because dnsperf itself gets
    # slower with very large -q
    outstanding = min(2000, max(a.outstanding, int(rate * 0.05)))
    cmd = bl.dnsperf_cmd(
        ctx.tools["dnsperf"],
        ctx.client_pin,
        port,
        qfile,
        dur,
        a.clients,
        outstanding,
        rate=rate,
        verbose=True,
        edns=sc.edns,
        once=sc.unique,
        binary=sc.binary,
    )
    udp0 = bl.udp_drop_counters()
    sock0 = bl.udp_port_drops([port])
    run0, wait0 = bl.group_run_wait_seconds(pgid)
    t_start = time.monotonic()
    trace = sched_trace_start(ctx, dur) if a.sched_trace else None
    res, out = bl.run_dnsperf(ctx.registry, f"lat-{server}", cmd, dur, 2.0)
    t_end = time.monotonic()
    run1, wait1 = bl.group_run_wait_seconds(pgid)
    udp1 = bl.udp_drop_counters()
    sock1 = bl.udp_port_drops([port])
    if sc.unique:
        qfile.unlink(missing_ok=True)
    in_order, timeouts, _ = bl.parse_verbose_latencies(out)
    skip = min(int(rate * warmup), len(in_order) // 2)
    everything = sorted(in_order)
    lats = sorted(in_order[skip:])
    wall = max(res.wall_s, 1e-9)

    def ms(v: float | None) -> float | None:
        return None if v is None else v * 1000.0

    return {
        "target_rate": rate,
        "outstanding": outstanding,
        "udp_rcvbuf_drops": udp1.get("RcvbufErrors", 0) - udp0.get("RcvbufErrors", 0),
        "server_socket_drops": sock1[port] - sock0[port],
        "achieved_qps": res.qps,
        "samples": len(lats),
        "timeouts": timeouts,
        "p50_ms": ms(bl.percentile(lats, 50)),
        "p90_ms": ms(bl.percentile(lats, 90)),
        "p99_ms": ms(bl.percentile(lats, 99)),
        "p999_ms": ms(bl.percentile(lats, 99.9)),
        "max_ms": ms(lats[-1] if lats else None),
        "warmup_s": warmup,
        "warmup_samples": skip,
        "p99_with_warmup_ms": ms(bl.percentile(everything, 99)),
        # time the server was runnable but another task had its core: the queueing it
        # causes lands in the tail and is the machine's, not the server's
        "server_cpu_pct": 100.0 * (run1 - run0) / wall,
        "server_runq_wait_ms_per_s": 1000.0 * (wait1 - wait0) / wall,
        # the probe's counted window (after the warm-up), monotonic: for --lagprobe
        "window": (t_start + warmup, t_end),
        **({"cpu_sharers": sched_trace_end(trace)} if trace is not None else {}),
    }


def sched_trace_start(ctx: Ctx, dur: float) -> tuple[Any, Path] | None:
    """`perf sched record` on the server's CPU for the probe (--sched-trace): who else ran
    there, and how long the server waited for it."""
    perf = bl.which("perf")
    if perf is None:
        return None
    path = ctx.workdir / "sched.data"
    proc = ctx.registry.start(
        "perf-sched", [perf, "sched", "record", "-C", ctx.args.server_cpu, "-o", str(path),
                       "--", "sleep", f"{dur:g}"])
    return proc, path


def sched_trace_end(trace: tuple[Any, Path]) -> list[dict[str, Any]]:
    """Tasks that ran on the server's CPU during the probe, by run time (perf sched latency)."""
    proc, path = trace
    try:
        proc.popen.wait(timeout=30)
    except Exception:
        pass
    perf = bl.which("perf")
    if perf is None or not path.exists():
        return []
    import re
    import subprocess

    try:
        text = subprocess.run([perf, "sched", "latency", "-i", str(path), "--sort", "runtime"],
                              capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows: list[dict[str, Any]] = []
    for line in text.splitlines():
        m = re.match(r"\s*(\S.*?)\s*\|\s*([\d.]+) ms\s*\|\s*(\d+)\s*\|\s*avg:\s*([\d.]+) ms"
                     r"\s*\|\s*max:\s*([\d.]+) ms", line)
        if m:
            rows.append({"task": m[1], "runtime_ms": float(m[2]), "switches": int(m[3]),
                         "avg_delay_ms": float(m[4]), "max_delay_ms": float(m[5])})
    path.unlink(missing_ok=True)
    return rows[:10]


def measure_one(ctx: Ctx, server: str, sc: Scenario, rnd: int) -> dict[str, Any]:
    a = ctx.args
    r: dict[str, Any] = {"server": server, "scenario": sc.name, "round": rnd, "notes": []}
    if server in ctx.failed:
        r.update(status="failed to start", error=ctx.failed[server])
        return r
    bl.log(f"[{sc.name}] {server}: starting")
    proc, launch, err = start_server(ctx, server)
    if proc is None:
        assert err is not None
        bl.log(f"[{sc.name}] {server}: FAILED TO START: {err}")
        ctx.failed[server] = err
        r.update(status="failed to start", error=err)
        return r
    port = launch.port
    try:
        r["start_mem"] = bl.group_memory_kib(proc.pid)
        if sc.warm:
            r["warm"] = warm(ctx, server, port, sc)
        problems = run_checks(port, sc.checks)
        r["check_problems"] = problems
        if problems:
            r["notes"].append("answer check failed: " + "; ".join(problems))

        # ---- max throughput run
        if sc.unique:
            count = int(a.duration * a.miss_names_per_s)
            qfile = miss_file(ctx, server, rnd, "load", count)
        else:
            assert sc.qfile is not None
            qfile, count = sc.qfile, sc.count
        cmd = bl.dnsperf_cmd(
            ctx.tools["dnsperf"],
            ctx.client_pin,
            port,
            qfile,
            a.duration,
            a.clients,
            a.outstanding,
            once=sc.unique,
            edns=sc.edns,
            binary=sc.binary,
        )
        r["dnsperf_cmd"] = " ".join(cmd)
        bl.log(f"[{sc.name}] {server}: load {a.duration:g}s")
        cpu0 = bl.group_cpu_seconds(proc.pid)
        udp0 = bl.udp_drop_counters()
        sock0 = bl.udp_port_drops([port, ctx.ports["nsd"]])
        sampler = WindowSampler(proc.pid, 0.3, max(0.6, a.duration - 0.2))
        sampler.start()
        res, _ = bl.run_dnsperf(ctx.registry, f"load-{server}", cmd, a.duration, 2.0)
        sampler.join(timeout=5)
        cpu1 = bl.group_cpu_seconds(proc.pid)
        udp1 = bl.udp_drop_counters()
        sock1 = bl.udp_port_drops([port, ctx.ports["nsd"]])
        if sc.unique:
            qfile.unlink(missing_ok=True)
            if res.sent >= count and res.run_time_s < 0.9 * a.duration:
                r["notes"].append(
                    f"ran out of fresh names after {res.run_time_s:.1f}s "
                    "(raise --miss-names-per-s); QPS still counts only misses"
                )
        r["load"] = res.to_dict()
        cpu = cpu1 - cpu0
        r["server_cpu_s"] = cpu
        r["server_proc_cpu_pct"] = 100.0 * cpu / max(res.wall_s, 1e-9)
        r["cpu_us_per_query"] = 1e6 * cpu / res.completed if res.completed else None
        r["client_proc_cpu_pct"] = 100.0 * res.client_cpu_s / max(res.wall_s, 1e-9)
        r.update(sampler.result(a.server_cpu, a.client_cpu))
        r["udp_drops"] = {k: udp1.get(k, 0) - v for k, v in udp0.items()}
        r["udp_drops"]["server_socket"] = sock1[port] - sock0[port]
        r["udp_drops"]["nsd_socket"] = sock1[ctx.ports["nsd"]] - sock0[ctx.ports["nsd"]]
        bad = {k: v for k, v in res.rcodes.items() if k not in ("NOERROR", "NXDOMAIN")}
        if bad:
            r["notes"].append("unexpected rcodes: " + ", ".join(f"{k} {v}" for k, v in bad.items()))
        if res.rc != 0 or res.sent == 0:
            r["notes"].append(f"dnsperf rc={res.rc}: {res.tail}")
        srv, cli = r.get("server_core_pct"), r.get("client_core_pct")
        if srv is not None and cli is not None and cli > 95 and srv < 90:
            r["notes"].append("client-bound (dnsperf core saturated): QPS is a lower bound")
        proc_pct = r.get("server_proc_cpu_pct_steady")
        if srv is not None and proc_pct is not None and srv - proc_pct > 40:
            r["notes"].append(
                f"server core {srv:.0f}% busy but server only {proc_pct:.0f}%: "
                "other load on that core (noisy)"
            )
        drops = r["udp_drops"]
        if drops.get("RcvbufErrors"):
            other = drops["RcvbufErrors"] - drops["server_socket"] - drops["nsd_socket"]
            r["notes"].append(
                f"UDP receive-buffer drops: server socket {drops['server_socket']}, "
                f"nsd {drops['nsd_socket']}, other sockets {other}"
            )
        steal = r.get("steal_pct")
        if steal is not None and steal > 5:
            r["notes"].append(f"hypervisor steal {steal:.0f}%: noisy")
        if not proc.alive():
            raise RuntimeError("server died during the load run")

        # ---- fixed-rate latency probe
        if a.latency_duration > 0 and res.qps > 0:
            bl.log(
                f"[{sc.name}] {server}: latency probe {a.latency_warmup:g}s warm-up "
                f"+ {a.latency_duration:g}s"
            )
            lat = latency_probe(ctx, server, port, sc, rnd, res.qps, proc.pid)
            r["latency"] = lat
            if lat["server_runq_wait_ms_per_s"] > 20:
                r["notes"].append(
                    f"latency probe: the server waited {lat['server_runq_wait_ms_per_s']:.0f} "
                    "ms/s for its core (other load on it): p99 is partly the machine's"
                )
            if lat["achieved_qps"] < 0.9 * lat["target_rate"]:
                r["notes"].append(
                    f"latency probe reached {lat['achieved_qps']:,.0f} of "
                    f"{lat['target_rate']:,.0f} q/s"
                )
            if lat["timeouts"]:
                r["notes"].append(
                    f"latency probe: {lat['timeouts']} timeouts "
                    f"({lat['server_socket_drops']} dropped at the server socket, "
                    f"{lat['udp_rcvbuf_drops']} UDP drops system-wide)"
                )
        if not proc.alive():
            raise RuntimeError("server died during the latency probe")
        r["end_mem"] = bl.group_memory_kib(proc.pid)
        r["status"] = "ok"
        if server == "linkdns" and a.lagprobe and "latency" in r:
            ctx.registry.stop(proc)  # the daemon writes its lag record on exit
            import lagprobe

            r["lagprobe"] = lagprobe.summarize(ctx.workdir / "lag.json", *r["latency"]["window"])
    except bl.Abort:
        raise
    except Exception as exc:
        r["status"] = "error"
        r["error"] = f"{exc}\n--- output tail ---\n{proc.output_tail()}"
        bl.log(f"[{sc.name}] {server}: ERROR {r['error']}")
    finally:
        ctx.registry.stop(proc)
    return r


# --------------------------------------------------------------------------- aggregation


def flatten(r: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of one measurement (None when not measured)."""
    load = r.get("load") or {}
    lat = r.get("latency") or {}
    end = r.get("end_mem") or {}
    start = r.get("start_mem") or {}

    def kib_to_mib(v: int | None) -> float | None:
        return None if v is None else v / 1024.0

    avg = load.get("avg_latency_s")
    return {
        "qps": load.get("qps"),
        "loss_pct": load.get("loss_pct"),
        "avg_ms": None if avg is None else avg * 1000.0,
        "p50_ms": lat.get("p50_ms"),
        "p99_ms": lat.get("p99_ms"),
        "probe_qps": lat.get("achieved_qps"),
        "server_cpu_s": r.get("server_cpu_s"),
        "server_core_pct": r.get("server_core_pct"),
        "cpu_us_per_query": r.get("cpu_us_per_query"),
        "client_core_pct": r.get("client_core_pct"),
        "server_proc_cpu_pct": r.get("server_proc_cpu_pct_steady"),
        "steal_pct": r.get("steal_pct"),
        "peak_rss_mib": kib_to_mib(end.get("hwm_kib")),
        "start_rss_mib": kib_to_mib(start.get("rss_kib")),
        "pss_mib": kib_to_mib(end.get("pss_kib")),
        "processes": end.get("processes"),
        "response_bytes": load.get("response_bytes"),
    }


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        first = runs[0]
        return {
            "status": first.get("status", "error"),
            "error": first.get("error", ""),
            "rounds": runs,
        }
    flats = [flatten(r) for r in ok]
    med: dict[str, Any] = {}
    for k in flats[0]:
        vals = [f[k] for f in flats if f[k] is not None]
        med[k] = statistics.median(vals) if vals else None
    notes: list[str] = []
    for r in runs:
        for n in r.get("notes", []):
            if n not in notes:
                notes.append(n)
        if r.get("status") != "ok":
            notes.append(f"round {r['round']}: {r.get('status')}: {str(r.get('error'))[:200]}")
    return {"status": "ok", **med, "notes": notes, "rounds": runs}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# --------------------------------------------------------------------------- reporting


def fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000 and digits <= 1:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def fmt_ratio(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


RATIO_PAIRS = (("linkdns", "unbound"), ("linkdns", "dnsmasq"), ("dnsmasq", "unbound"))


def render_markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    servers: list[str] = meta["servers"]
    lines = [
        "# linkdns benchmark",
        "",
        f"Run {meta['started']} on `{meta['host']}` ({meta['cpus']} CPUs), "
        f"{meta['duration_s']:g}s load per run, latency probe {meta['latency_duration_s']:g}s "
        f"(after a {meta.get('latency_warmup_s', 0):g}s warm-up that is not counted) at "
        + (
            f"{meta['latency_rate']:g} q/s"
            if meta["latency_rate"]
            else f"{meta['latency_fraction'] * 100:.0f}% of each server's own max QPS"
        )
        + f", rounds={meta['rounds']}, dnsperf -c {meta['clients']} -q {meta['outstanding']}.",
        "Servers pinned to CPU "
        f"{meta['server_cpu']}, dnsperf to CPU {meta['client_cpu']}. "
        "Absolute figures are noisy (shared machine); compare the ratios within this run.",
        "",
    ]
    summary_pairs = [(x, y) for x, y in RATIO_PAIRS if x in servers and y in servers]
    if summary_pairs:
        lines += ["## QPS ratios (same run)", ""]
        lines.append("| scenario | " + " | ".join(f"{x}/{y}" for x, y in summary_pairs) + " |")
        lines.append("|---|" + "---:|" * len(summary_pairs))
        for sc, data in results["scenarios"].items():
            cells = [
                fmt_ratio(
                    ratio(
                        data["servers"].get(x, {}).get("qps"), data["servers"].get(y, {}).get("qps")
                    )
                )
                for x, y in summary_pairs
            ]
            lines.append(f"| {sc} | " + " | ".join(cells) + " |")
        lines.append("")
    for sc, data in results["scenarios"].items():
        lines += [f"## {sc}", "", data["description"], ""]
        lines.append(
            "| server | QPS | loss % | avg ms | p50 ms | p99 ms | probe q/s | CPU us/q "
            "| srv proc CPU % | srv core % | client core % | peak RSS MiB | resp B | notes |"
        )
        lines.append("|---|" + "---:|" * 12 + "---|")
        for s in servers:
            d = data["servers"].get(s, {})
            if d.get("status") != "ok":
                err = str(d.get("error", "")).strip().splitlines()
                why = err[0] if err else ""
                lines.append(f"| {s} | {d.get('status', '?')} |" + " |" * 11 + f" {why} |")
                continue
            lines.append(
                f"| {s} | {fmt(d['qps'], 0)} | {fmt(d['loss_pct'], 2)} | {fmt(d['avg_ms'], 3)} "
                f"| {fmt(d['p50_ms'], 3)} | {fmt(d['p99_ms'], 3)} | {fmt(d['probe_qps'], 0)} "
                f"| {fmt(d['cpu_us_per_query'], 1)} | {fmt(d['server_proc_cpu_pct'])} "
                f"| {fmt(d['server_core_pct'])} | {fmt(d['client_core_pct'])} "
                f"| {fmt(d['peak_rss_mib'])} "
                f"| {fmt(d['response_bytes'], 0)} | {'; '.join(d.get('notes', []))} |"
            )
        lines.append("")
        for x, y in RATIO_PAIRS:
            if x in servers and y in servers:
                dx, dy = data["servers"].get(x, {}), data["servers"].get(y, {})
                lines.append(
                    f"- **{x}/{y}**: QPS {fmt_ratio(ratio(dx.get('qps'), dy.get('qps')))}, "
                    f"p99 {fmt_ratio(ratio(dx.get('p99_ms'), dy.get('p99_ms')))}, "
                    f"CPU/query {fmt_ratio(ratio(dx.get('cpu_us_per_query'), dy.get('cpu_us_per_query')))}"
                )
        lines.append("")
    failed = {s: e for s, e in meta.get("failed_to_start", {}).items()}
    for s, e in failed.items():
        lines += [f"## {s} failed to start", "", "```", e.strip()[-3000:], "```", ""]
    return "\n".join(lines)


def write_chart(results: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not importable: skipped qps.png (pip install matplotlib)"
    scen = list(results["scenarios"])
    servers: list[str] = results["meta"]["servers"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(servers))
    for metric, ax, title in (
        ("qps", axes[0], "max QPS (higher is better)"),
        ("p99_ms", axes[1], "p99 latency ms at fixed-rate probe (lower is better)"),
    ):
        for i, s in enumerate(servers):
            vals = [results["scenarios"][sc]["servers"].get(s, {}).get(metric) or 0 for sc in scen]
            xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(scen))]
            ax.bar(xs, vals, width, label=s)
        ax.set_xticks(range(len(scen)))
        ax.set_xticklabels(scen)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"linkdns bench {results['meta']['started']} (same-run comparison)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"wrote {path}"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 3s load, 2s latency probe")
    p.add_argument("--duration", type=float, help="seconds per max-QPS run (default 10, quick 3)")
    p.add_argument(
        "--latency-duration",
        type=float,
        help="seconds of the fixed-rate latency probe (default 5, quick 2; 0 = skip)",
    )
    p.add_argument(
        "--latency-fraction",
        type=float,
        default=0.5,
        help="probe rate as a fraction of the server's own max QPS (default 0.5)",
    )
    p.add_argument(
        "--latency-rate",
        type=float,
        default=0.0,
        help="fixed probe rate in q/s for every server instead of --latency-fraction",
    )
    p.add_argument(
        "--latency-warmup",
        type=float,
        default=1.0,
        help="seconds the latency probe runs before the answers that count (dnsperf's start-up "
        "burst; default 1, 0 = count everything)",
    )
    p.add_argument("--out", default=str(bl.BENCH_DIR / "out"), help="output dir (bench/out)")
    p.add_argument(
        "--servers",
        default=",".join(bl.ALL_SERVERS),
        help="comma list from linkdns,unbound,dnsmasq",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma list from {','.join(SCENARIO_ORDER)}",
    )
    p.add_argument("--python", default=sys.executable, help="interpreter for `-m linkdns`")
    p.add_argument(
        "--no-src-path",
        action="store_true",
        help="don't prepend the repo's src/ to PYTHONPATH for linkdns",
    )
    p.add_argument("--rounds", type=int, default=1, help="repeat each scenario; report medians")
    p.add_argument("--hosts", type=int, default=5000, help="hostN names in the zone / hit1 set")
    p.add_argument("--ndots-hosts", type=int, default=2000, help="names in the ndots set")
    p.add_argument("--clients", type=int, default=8, help="dnsperf -c")
    p.add_argument("--outstanding", type=int, default=200, help="dnsperf -q")
    p.add_argument("--warm-rate", type=float, default=10000, help="q/s for the warm-up pass")
    p.add_argument(
        "--miss-names-per-s",
        type=float,
        default=60000,
        help="fresh names generated per second of miss load (dnsperf -n 1)",
    )
    p.add_argument(
        "--base-port",
        type=int,
        default=25300,
        help="nsd port, caches on the next free ones (all on 127.0.0.1)",
    )
    p.add_argument("--server-cpu", default="1", help="taskset CPU list for the caches")
    p.add_argument("--client-cpu", default="0", help="taskset CPU list for dnsperf")
    p.add_argument("--nsd-cpu", default="", help="taskset CPU list for nsd (default unpinned)")
    p.add_argument(
        "--start-timeout", type=float, default=20.0, help="seconds to wait for a server to answer"
    )
    p.add_argument("--max-total", type=float, help="hard limit for the whole run in seconds")
    p.add_argument("--peers-dir", help="dir with nsd.conf/unbound.conf/dnsmasq.conf templates")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temp dir (logs, zones)")
    p.add_argument("--sched-trace", action="store_true",
                   help="perf sched record on the server CPU during each latency probe: "
                        "which tasks shared it (results.json: latency.cpu_sharers)")
    p.add_argument("--lagprobe", action="store_true",
                   help="run linkdns through bench/lagprobe.py: loop lags during the latency "
                        "probe, with GC and run-queue wait (in results.json)")
    a = p.parse_args(argv)
    if a.duration is None:
        a.duration = 3.0 if a.quick else 10.0
    if a.latency_duration is None:
        a.latency_duration = 2.0 if a.quick else 5.0
    a.server_list = [s.strip() for s in a.servers.split(",") if s.strip()]
    for s in a.server_list:
        if s not in bl.ALL_SERVERS:
            p.error(f"unknown server {s!r}")
    a.scenario_list = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    if a.max_total is None:
        per = a.duration + a.latency_duration + a.latency_warmup + 12
        a.max_total = max(
            120.0, 1.5 * per * len(a.server_list) * len(a.scenario_list) * a.rounds + 60
        )
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    needed = ["nsd", "dnsperf", "taskset"]
    tools = bl.require_tools(needed)
    servers: list[str] = []
    skipped: dict[str, str] = {}
    for s in a.server_list:
        if s in bl.PEER_SERVERS:
            path = bl.which(s)
            if path is None:
                skipped[s] = bl.missing_message(s)
                bl.log(f"WARNING: skipping {s}: {skipped[s]}")
                continue
            tools[s] = path
        servers.append(s)
    for label, cpu in (("--server-cpu", a.server_cpu), ("--client-cpu", a.client_cpu)):
        if not bl.cpu_available(cpu):
            bl.log(f"WARNING: {label} {cpu} not available here; running that side unpinned")

    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="linkdns-bench-"))
    (workdir / "logs").mkdir()
    registry = bl.ProcessRegistry(workdir / "logs")
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    bl.install_signal_handlers(a.max_total)
    rc = 0
    results: dict[str, Any] = {}
    try:
        alloc = bl.PortAllocator(a.base_port)
        ports = {"nsd": alloc.take(a.base_port)}
        for i, s in enumerate(bl.ALL_SERVERS):
            ports[s] = alloc.take(a.base_port + 1 + i)
        ports["metrics"] = alloc.take(a.base_port + 10)
        ctx = Ctx(
            args=a,
            tools=tools,
            registry=registry,
            workdir=workdir,
            peers=bl.find_peers_dir(a.peers_dir),
            ports=ports,
            server_pin=bl.pin(tools["taskset"], a.server_cpu),
            client_pin=bl.pin(tools["taskset"], a.client_cpu),
            run_id=f"{random.randrange(16**6):06x}",
            deadline=time.monotonic() + a.max_total,
        )
        bl.log(
            f"workdir {workdir}; ports {ports}; peers templates "
            f"{ctx.peers or 'embedded copies'}; whole-run limit {a.max_total:.0f}s"
        )
        hosts = max(a.hosts, ws.ZONE_HOSTS) if any(map(ws.is_ws, a.scenario_list)) else a.hosts
        zones = bl.write_zones(workdir, hosts)
        bl.start_nsd(
            registry,
            tools["nsd"],
            workdir,
            ports["nsd"],
            zones,
            ctx.peers,
            bl.pin(tools["taskset"], a.nsd_cpu),
        )
        bl.log(f"nsd ready on 127.0.0.1:{ports['nsd']}")
        scenarios = build_scenarios(ctx, a.scenario_list)

        results = {
            "meta": {
                "started": started,
                "host": platform.node(),
                "cpus": len(os.sched_getaffinity(0)),
                "servers": servers,
                "skipped": skipped,
                "scenarios": a.scenario_list,
                "duration_s": a.duration,
                "latency_duration_s": a.latency_duration,
                "latency_warmup_s": a.latency_warmup,
                "latency_fraction": a.latency_fraction,
                "latency_rate": a.latency_rate,
                "rounds": a.rounds,
                "clients": a.clients,
                "outstanding": a.outstanding,
                "server_cpu": a.server_cpu,
                "client_cpu": a.client_cpu,
                "ports": ports,
                "python": a.python,
                "versions": {
                    "nsd": bl.tool_version(tools["nsd"], ["-v"]),
                    "dnsperf": bl.tool_version(tools["dnsperf"], ["-h"]),
                    **(
                        {"unbound": bl.tool_version(tools["unbound"], ["-V"])}
                        if "unbound" in tools
                        else {}
                    ),
                    **(
                        {"dnsmasq": bl.tool_version(tools["dnsmasq"], ["-v"])}
                        if "dnsmasq" in tools
                        else {}
                    ),
                },
                "latency_method": "dnsperf -Q <rate> -v per-query latencies, percentiles in "
                "the harness over the answers after the warm-up",
            },
            "scenarios": {},
        }
        for sc in scenarios:
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in servers}
            for rnd in range(a.rounds):
                order = (
                    servers[rnd % len(servers) :] + servers[: rnd % len(servers)] if servers else []
                )
                for s in order:
                    runs[s].append(measure_one(ctx, s, sc, rnd))
            results["scenarios"][sc.name] = {
                "description": sc.description,
                "servers": {s: aggregate(runs[s]) for s in servers},
            }
        results["meta"]["failed_to_start"] = dict(ctx.failed)
        results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    except (KeyboardInterrupt, bl.Abort) as exc:
        bl.log(f"ABORTED: {str(exc) or 'interrupted (SIGINT)'}; stopping everything")
        rc = 130
    except Exception:
        traceback.print_exc()
        rc = 1
    finally:
        bl.clean_up(registry, workdir, keep=a.keep_workdir or rc not in (0, 130))
    if results.get("scenarios"):
        md = render_markdown(results)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
        (out_dir / "results.md").write_text(md + "\n")
        note = write_chart(results, out_dir / "qps.png")
        note_ws = ws.write_chart(results, out_dir / "workingset.png")
        print(md)
        bl.log(note)
        bl.log(note_ws)
        bl.log(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
