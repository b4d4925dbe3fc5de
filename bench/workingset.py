"""Working-set scenarios for bench/run.py: cache hits over 1k, 10k and 50k distinct query
shapes, A and AAAA mixed, shuffled, sent as real clients send them.

Each query file is written in dnsperf's binary format (``-B``: 2-byte length, then the wire
message; dnsperf puts in its own ID and sends the rest as it is), so the OPT record is exactly
the client's, which dnsperf's ``-e``/``-D`` cannot do (they advertise 4096, ``-D`` with DO):

- Go's resolver (``net/dnsclient_unix.go``, ``newRequest``): RD, EDNS0 with UDP size 1232,
  DO clear, no options;
- systemd-resolved (``dns_server_adjust_opt`` + ``dns_packet_append_opt``): RD, EDNS0 with
  the link MTU minus the IP/UDP headers (1472 on a 1500-byte link; 4096 at most), DO set at
  its default feature level, and the RFC 6975 DAU/DHU/N3U options that come with DO;
- no EDNS at all (glibc's and musl's stub resolvers by default).

The EDNS scenarios (``wsN``) ask half of the names the Go way and the other half the
systemd-resolved way; ``wsN-noedns`` asks every name without EDNS. A shape is one (name,
type, client form): ``ws50k`` is 12,500 names x (A, AAAA) x 2 forms, ``ws50k-noedns`` 25,000
names x (A, AAAA). Every hostK has an A record and even K also an AAAA record, so about a
quarter of the answers are NODATA (negative-cache hits), as on a real node.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

SIZES = {"ws1k": 1000, "ws10k": 10000, "ws50k": 50000}
NAMES = tuple(SIZES) + tuple(f"{n}-noedns" for n in SIZES)
#: names the zone needs (ws50k-noedns: 25,000 names x A/AAAA)
ZONE_HOSTS = 25000

T_A, T_AAAA, T_OPT = 1, 28, 41
# OPT RRs: owner root, TYPE OPT, CLASS = UDP size, TTL = ext-rcode/version/flags, RDLEN, RDATA
OPT_GO = b"\x00" + struct.pack(">HHIH", T_OPT, 1232, 0, 0)
_RFC6975 = bytes((0, 5, 0, 7, 5, 7, 8, 10, 13, 14, 15,  # DAU: the algorithms it validates
                  0, 6, 0, 3, 1, 2, 4,  # DHU: SHA-1, SHA-256, SHA-384
                  0, 7, 0, 1, 1))  # N3U: SHA-1
OPT_RESOLVED = b"\x00" + struct.pack(">HHIH", T_OPT, 1472, 0x8000, len(_RFC6975)) + _RFC6975


def is_ws(name: str) -> bool:
    return name in NAMES


def size_of(name: str) -> int:
    return SIZES[name.removesuffix("-noedns")]


def edns(name: str) -> bool:
    return not name.endswith("-noedns")


def wire_name(text: str) -> bytes:
    return b"".join(bytes((len(p),)) + p.encode() for p in text.split(".")) + b"\x00"


def message(name: str, qtype: int, opt: bytes) -> bytes:
    head = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 1 if opt else 0)
    return head + wire_name(name) + struct.pack(">HH", qtype, 1) + opt


def shapes(name: str) -> list[tuple[str, int, bytes]]:
    """The (name, qtype, OPT) shapes of a scenario, shuffled (a fixed seed per scenario)."""
    n = size_of(name)
    out: list[tuple[str, int, bytes]] = []
    if edns(name):
        for k in range(1, n // 4 + 1):
            for opt in (OPT_GO, OPT_RESOLVED):
                out += [(f"host{k}.example.test", T_A, opt),
                        (f"host{k}.example.test", T_AAAA, opt)]
    else:
        for k in range(1, n // 2 + 1):
            out += [(f"host{k}.example.test", T_A, b""), (f"host{k}.example.test", T_AAAA, b"")]
    random.Random(f"linkdns-{name}").shuffle(out)
    return out


def write(name: str, workdir: Path) -> tuple[Path, int]:
    """Write the scenario's dnsperf -B file; (path, number of queries)."""
    path = workdir / f"q-{name}.bin"
    qs = shapes(name)
    with path.open("wb") as f:
        for host, qtype, opt in qs:
            m = message(host, qtype, opt)
            f.write(struct.pack(">H", len(m)) + m)
    return path, len(qs)


def describe(name: str) -> str:
    n = size_of(name)
    if edns(name):
        return (f"warm cache; {n:,} distinct shapes: {n // 4:,} names x A/AAAA x 2 client "
                "forms (Go: EDNS 1232; systemd-resolved: EDNS 1472 + DO + RFC 6975 options), "
                "shuffled; AAAA exists for half the names (the rest: NODATA)")
    return (f"warm cache; {n:,} distinct shapes: {n // 2:,} names x A/AAAA, no EDNS, "
            "shuffled; AAAA exists for half the names (the rest: NODATA)")


def write_chart(results: dict[str, Any], path: Path) -> str:
    """Hit QPS against working-set size, per server, EDNS (solid) and not (dashed)."""
    got = {n: results["scenarios"][n] for n in NAMES if n in results.get("scenarios", {})}
    if not got:
        return "no working-set scenario: skipped " + path.name
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"matplotlib not importable: skipped {path.name} (pip install matplotlib)"
    servers: list[str] = results["meta"]["servers"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = {"linkdns": "tab:blue", "unbound": "tab:orange", "dnsmasq": "tab:green"}
    panels = (("qps", "max QPS (dnsperf, one server core; higher is better)"),
              ("cpu_us_per_query", "server CPU µs per query (lower is better)"))
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for s in servers:
            for with_edns, style in ((True, "-"), (False, "--")):
                pts = [(size_of(n), got[n]["servers"].get(s, {}).get(metric))
                       for n in NAMES if n in got and edns(n) == with_edns]
                pts = sorted((x, y) for x, y in pts if y)
                if not pts:
                    continue
                ax.plot([x for x, _ in pts], [y for _, y in pts], style, marker="o",
                        color=colors.get(s), label=f"{s} ({'EDNS' if with_edns else 'no EDNS'})")
        ax.set_xscale("log")
        ax.set_xticks(sorted(SIZES.values()))
        ax.set_xticklabels([f"{v // 1000}k" for v in sorted(SIZES.values())])
        ax.set_xlabel("distinct query shapes in the working set (cache hits, shuffled)")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"hit QPS and CPU per query vs working set, {results['meta']['started']} "
                 "(same run; QPS also reflects each server's share of a shared core)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"wrote {path}"
