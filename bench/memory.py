#!/usr/bin/env python3
"""Cache memory per entry for linkdns with a NodeLocal DNSCache-style Corefile.

    python bench/memory.py [--servers linkdns[,unbound,dnsmasq]] [--entries 9984] [--out bench/out]

linkdns gets four server blocks (cluster.local, in-addr.arpa, ip6.arpa, .), each with
`cache { success N denial N }` and forwarding to nsd. nsd serves all four zones, so each block's
success cache is filled with N distinct answered names and its denial cache with N distinct
NXDOMAIN names (8*N entries in total). Reported: RSS before and after the fill and
(RSS_after - RSS_baseline) / entries. unbound and dnsmasq can be measured the same way (one
forwarder config, same names) as a reference. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

BLOCKS = ("cluster.local", "in-addr.arpa", "ip6.arpa", ".")
UNBOUND_EXTRA = ("unblock-lan-zones: yes", "insecure-lan-zones: yes")


def nodelocal_corefile(port: int, nsd_port: int, metrics_port: int, entries: int) -> str:
    blocks = []
    for zone in BLOCKS:
        blocks.append(
            f"{zone}:{port} {{\n"
            f"    bind 127.0.0.1\n"
            f"    cache {{\n"
            f"        success {entries}\n"
            f"        denial {entries}\n"
            f"    }}\n"
            f"    forward . 127.0.0.1:{nsd_port}\n"
            f"    prometheus 127.0.0.1:{metrics_port}\n"
            f"}}\n"
        )
    return "\n".join(blocks)


def mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024.0


def measure(
    a: argparse.Namespace,
    server: str,
    *,
    registry: bl.ProcessRegistry,
    workdir: Path,
    tools: dict[str, str],
    peers: Path | None,
    ports: dict[str, int],
    names: bl.MemoryNames,
    qfile: Path,
    nqueries: int,
) -> dict[str, Any]:
    r: dict[str, Any] = {"server": server, "notes": []}
    port = ports[server]
    launch = bl.build_launch(
        server,
        workdir=workdir,
        port=port,
        nsd_port=ports["nsd"],
        tools=tools,
        pin_prefix=bl.pin(tools["taskset"], a.server_cpu),
        peers=peers,
        python=a.python,
        use_src=not a.no_src_path,
        corefile_text=nodelocal_corefile(port, ports["nsd"], ports["metrics"], a.entries)
        if server == "linkdns"
        else None,
        metrics_port=ports["metrics"] if server == "linkdns" else None,
        unbound_extra=UNBOUND_EXTRA,
        start_timeout_s=a.start_timeout,
    )
    bl.log(f"[memory] {server}: starting")
    proc = registry.start(server, launch.cmd, env=launch.env, cwd=workdir)
    try:
        err = bl.wait_ready(port, proc, launch.start_timeout_s, name="host1.example.test")
        if err is not None:
            r["status"] = "failed to start"
            r["error"] = f"{err}\n--- output tail ---\n{proc.output_tail()}"
            bl.log(f"[memory] {server}: FAILED TO START: {r['error']}")
            return r
        time.sleep(a.settle)
        r["baseline"] = bl.group_memory_kib(proc.pid)
        if launch.metrics_port:
            text = bl.fetch_metrics(launch.metrics_port)
            r["metrics_before"] = bl.cache_entries_from_metrics(text) if text else None
        client_pin = bl.pin(tools["taskset"], a.client_cpu)
        r["passes"] = []
        for i in range(1, 4):
            dur = nqueries / a.fill_rate * 1.5 + 5
            cmd = bl.dnsperf_cmd(
                tools["dnsperf"],
                client_pin,
                port,
                qfile,
                dur,
                a.clients,
                a.outstanding,
                rate=a.fill_rate,
                once=True,
            )
            bl.log(f"[memory] {server}: fill pass {i} ({nqueries} queries at {a.fill_rate:g} q/s)")
            res, _ = bl.run_dnsperf(registry, f"fill-{server}", cmd, dur, 2.0)
            time.sleep(a.settle)
            mem = bl.group_memory_kib(proc.pid)
            r["passes"].append({"dnsperf": res.to_dict(), "mem": mem})
            if not proc.alive():
                raise RuntimeError("server died during the fill")
            if i >= 2 and res.lost == 0:
                break
        after = r["passes"][-1]["mem"]
        first = r["passes"][0]["mem"]
        r["after"] = after
        # spot checks: the first name of each block answers as expected
        problems = []
        for block in BLOCKS:
            for kind, rcode in (("success", 0), ("denial", 3)):
                qname, qtype = getattr(names, kind)[block][0]
                ans = bl.query(port, qname, qtype, timeout_s=1.0)
                if ans is None or ans.rcode != rcode or (rcode == 3 and ans.nscount < 1):
                    problems.append(f"{qname} {qtype}: {ans}")
        if problems:
            r["notes"].append("answer check failed: " + "; ".join(problems))
        entries_expected = 2 * a.entries * len(BLOCKS)
        r["entries_expected"] = entries_expected
        entries = float(entries_expected)
        source = "names queried"
        if launch.metrics_port:
            text = bl.fetch_metrics(launch.metrics_port)
            counts = bl.cache_entries_from_metrics(text) if text else {}
            r["metrics_after"] = counts
            if counts:
                entries = sum(counts.values())
                source = "cache_entries metric"
                if entries < 0.95 * entries_expected:
                    r["notes"].append(
                        f"metric shows {entries:.0f} cache entries, expected {entries_expected}"
                    )
            else:
                r["notes"].append("no *_cache_entries metric on the prometheus endpoint")
        r["entries"], r["entries_source"] = entries, source
        base = r["baseline"]
        for key in ("rss_kib", "pss_kib"):
            delta = after[key] - base[key]
            r[f"delta_{key}"] = delta
            r[f"bytes_per_entry_{key[:3]}"] = delta * 1024 / entries if entries else None
        grow = after["rss_kib"] - first["rss_kib"]
        r["rss_growth_after_first_pass_kib"] = grow
        if len(r["passes"]) > 1 and grow > 0.1 * max(1, after["rss_kib"] - base["rss_kib"]):
            r["notes"].append(f"RSS grew {grow / 1024:.1f} MiB on cache-hit passes")
        r["status"] = "ok"
        return r
    except bl.Abort:
        raise
    except Exception as exc:
        r["status"] = "error"
        r["error"] = f"{exc}\n--- output tail ---\n{proc.output_tail()}"
        return r
    finally:
        registry.stop(proc)


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# linkdns cache memory",
        "",
        f"Run {meta['started']}: {len(BLOCKS)} blocks ({', '.join(BLOCKS)}), each filled with "
        f"{meta['entries']} answered + {meta['entries']} NXDOMAIN names "
        f"({meta['entries'] * 2 * len(BLOCKS)} entries). Same names for every server; "
        "unbound/dnsmasq run one forwarder config (reference only).",
        "",
        "| server | baseline RSS MiB | filled RSS MiB | delta MiB | entries | bytes/entry (RSS) "
        "| bytes/entry (PSS) | processes | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def f(v: float | None, d: int = 1) -> str:
        if v is None:
            return "-"
        return f"{v:,.{d}f}" if round(v, d) != 0 else f"{0:.{d}f}"

    for s, r in results["servers"].items():
        if r.get("status") != "ok":
            why = str(r.get("error", "")).strip().splitlines()
            lines.append(f"| {s} | {r.get('status')} | | | | | | | {why[0] if why else ''} |")
            continue
        lines.append(
            f"| {s} | {f(mib(r['baseline']['rss_kib']))} | {f(mib(r['after']['rss_kib']))} "
            f"| {f(mib(r['delta_rss_kib']))} | {r['entries']:,.0f} ({r['entries_source']}) "
            f"| {f(r['bytes_per_entry_rss'], 0)} | {f(r['bytes_per_entry_pss'], 0)} "
            f"| {r['after']['processes']} | {'; '.join(r['notes'])} |"
        )
    for s, r in results["servers"].items():
        if r.get("status") == "failed to start":
            lines += ["", f"## {s} failed to start", "", "```", str(r["error"])[-3000:], "```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--servers", default="linkdns", help="comma list from linkdns,unbound,dnsmasq")
    p.add_argument("--entries", type=int, default=9984, help="success (and denial) names per block")
    p.add_argument("--fill-rate", type=float, default=5000, help="q/s while filling")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--outstanding", type=int, default=100)
    p.add_argument("--settle", type=float, default=1.0, help="seconds before each RSS reading")
    p.add_argument("--out", default=str(bl.BENCH_DIR / "out"))
    p.add_argument("--python", default=sys.executable, help="interpreter for `-m linkdns`")
    p.add_argument("--no-src-path", action="store_true")
    p.add_argument("--base-port", type=int, default=25320)
    p.add_argument("--server-cpu", default="1")
    p.add_argument("--client-cpu", default="0")
    p.add_argument("--start-timeout", type=float, default=20.0)
    p.add_argument("--max-total", type=float, default=0.0, help="whole-run limit (s)")
    p.add_argument("--peers-dir")
    p.add_argument("--keep-workdir", action="store_true")
    a = p.parse_args(argv)
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    for s in servers:
        if s not in bl.ALL_SERVERS:
            p.error(f"unknown server {s!r}")
    tools = bl.require_tools(["nsd", "dnsperf", "taskset"])
    for s in list(servers):
        if s in bl.PEER_SERVERS:
            path = bl.which(s)
            if path is None:
                bl.log(f"WARNING: skipping {s}: {bl.missing_message(s)}")
                servers.remove(s)
            else:
                tools[s] = path
    nq = 2 * a.entries * len(BLOCKS)
    if not a.max_total:
        a.max_total = 120 + len(servers) * (3 * (nq / a.fill_rate * 1.5 + 10) + a.start_timeout)

    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="linkdns-mem-"))
    (workdir / "logs").mkdir()
    registry = bl.ProcessRegistry(workdir / "logs")
    bl.install_signal_handlers(a.max_total)
    rc = 0
    results: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "entries": a.entries,
            "blocks": list(BLOCKS),
            "fill_rate": a.fill_rate,
            "python": a.python,
        },
        "servers": {},
    }
    try:
        alloc = bl.PortAllocator(a.base_port)
        ports = {"nsd": alloc.take(a.base_port)}
        for i, s in enumerate(bl.ALL_SERVERS):
            ports[s] = alloc.take(a.base_port + 1 + i)
        ports["metrics"] = alloc.take(a.base_port + 10)
        peers = bl.find_peers_dir(a.peers_dir)
        bl.log(f"workdir {workdir}; ports {ports}; limit {a.max_total:.0f}s")
        names = bl.memory_names(a.entries)
        zones = bl.write_zones(workdir, hosts=10, memory_entries=a.entries)
        bl.start_nsd(registry, tools["nsd"], workdir, ports["nsd"], zones, peers, [])
        qs = [q for block in BLOCKS for q in names.success[block] + names.denial[block]]
        random.Random(7).shuffle(qs)
        qfile = workdir / "q-memory.txt"
        bl.write_queries(qfile, qs)
        for s in servers:
            results["servers"][s] = measure(
                a,
                s,
                registry=registry,
                workdir=workdir,
                tools=tools,
                peers=peers,
                ports=ports,
                names=names,
                qfile=qfile,
                nqueries=len(qs),
            )
    except (KeyboardInterrupt, bl.Abort) as exc:
        bl.log(f"ABORTED: {str(exc) or 'interrupted (SIGINT)'}; stopping everything")
        rc = 130
    except Exception:
        traceback.print_exc()
        rc = 1
    finally:
        bl.clean_up(registry, workdir, keep=a.keep_workdir or rc not in (0, 130))
    if results["servers"]:
        md = render(results)
        (out_dir / "memory.json").write_text(json.dumps(results, indent=2, default=str))
        (out_dir / "memory.md").write_text(md + "\n")
        print(md)
        bl.log(f"wrote {out_dir / 'memory.json'} and {out_dir / 'memory.md'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
