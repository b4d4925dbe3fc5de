#!/usr/bin/env python3
"""How long ``cache { snapshot FILE }`` takes to save and to load back a full cache.

    python bench/snapshot.py [--entries 40000] [--rounds 5] [--out bench/out]

A cache (the real Cache object, no sockets) is filled through the miss path (``Cache.absorb``)
with ENTRIES replies shaped like a node's traffic: 3/4 one-A-record answers with the zone's NS
in authority, 1/4 NXDOMAIN with an SOA (the search-path misses of a pod). Then, per round:
save (entries -> records -> file, fsync, rename) and load into an empty cache (read, digest,
decode, every record through the miss path's checks and ``store.put``). Reported: median and
worst of each, the file size and bytes per entry. The load is what delays a restart: it runs
before the listeners open. See docs/plugins/cache.md (snapshot).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

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
        if c.absorb(Request(q, PEER, "udp"), rw, False) is None:
            raise SystemExit(f"entry {i} was not stored")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=40000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/cache.snap"
        src = new_cache(path, args.entries)
        fill(src, args.entries)
        assert src.snapshot is not None
        saves, loads = [], []
        restored = 0
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            written = src.snapshot.save()
            saves.append(time.perf_counter() - t0)
            assert written == args.entries, written
            dst = new_cache(path, args.entries)
            assert dst.snapshot is not None
            gc.collect()
            t0 = time.perf_counter()
            restored, expired, skipped = dst.snapshot.load()
            loads.append(time.perf_counter() - t0)
            assert (restored, expired, skipped) == (args.entries, 0, 0), (restored, expired, skipped)
            assert len(dst.store) == args.entries
        size = Path(path).stat().st_size
    res = {
        "entries": args.entries,
        "rounds": args.rounds,
        "save_ms_median": round(statistics.median(saves) * 1000, 1),
        "save_ms_max": round(max(saves) * 1000, 1),
        "load_ms_median": round(statistics.median(loads) * 1000, 1),
        "load_ms_max": round(max(loads) * 1000, 1),
        "file_bytes": size,
        "bytes_per_entry": round(size / args.entries, 1),
        "python": sys.version.split()[0],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "snapshot.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"snapshot of {args.entries} entries ({size / 1e6:.1f} MB, "
          f"{res['bytes_per_entry']} B/entry), {args.rounds} rounds:")
    print(f"  save  median {res['save_ms_median']} ms   worst {res['save_ms_max']} ms")
    print(f"  load  median {res['load_ms_median']} ms   worst {res['load_ms_max']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
