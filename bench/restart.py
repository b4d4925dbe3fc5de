"""The restart drill's figures: what a client sees while linkdns is replaced.

A client sends ``--rate`` queries a second (1 s timeout, no retry) over a working set of
``--names`` names to a linkdns forwarding to a test upstream (20 ms per answer), warm for
``--warm`` seconds; then the instance is replaced, one way per variant, and the load goes on
for ``--after`` seconds. Reported per variant: failed lookups (timed out or wrong), the
longest time the client saw no answer, and the upstream queries sent in the first 10 s after
the new instance started serving (a cold cache asks again for every name).

Variants (add one: a function that replaces ``ctx.old`` and returns the new Daemon, and an
entry in VARIANTS; ``cache`` is the text put in the Corefile's cache block):

* ``stop-start``: SIGTERM, wait for the exit, start again (what a plain restart does);
* ``handover``: start a second instance (it takes the sockets over), then SIGTERM the first;
* ``stop-start+snapshot``, ``handover+snapshot``: the same with ``cache { snapshot FILE }`` (the
  new instance loads the old one's entries: written at its stop, or by its hand-over hook).

    python bench/restart.py                    # all variants, prints a table
    python bench/restart.py --json out.json handover
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from drill import Daemon, Load  # noqa: E402
from fakeupstream import FakeUpstream, Reply, a_records  # noqa: E402
from harness import free_port  # noqa: E402

UPSTREAM_DELAY = 0.02
WINDOW = 10.0  # seconds after the new instance serves in which upstream queries are counted


@dataclass
class Ctx:
    conf: Path
    port: int
    old: Daemon
    tmp: Path


@dataclass
class Variant:
    name: str
    replace: Callable[[Ctx], Daemon]
    #: lines inside the Corefile's ``cache { }`` block (e.g. a snapshot option)
    cache: Callable[[Path], str] = lambda tmp: ""


@dataclass
class Figures:
    variant: str
    sent: int
    failed: int
    timeouts: int
    errors: int
    longest_gap_ms: float
    slowest_answer_ms: float
    upstream_first_10s: int
    warm_upstream: int


def stop_start(ctx: Ctx) -> Daemon:
    ctx.old.stop()
    new = Daemon("-conf", str(ctx.conf))
    new.wait_for("linkdns-")
    return new


def handover(ctx: Ctx) -> Daemon:
    new = Daemon("-conf", str(ctx.conf))
    new.wait_for("hand-over: serving")
    ctx.old.stop()
    return new


def snapshot(tmp: Path) -> str:
    return f"    snapshot {tmp}/cache.snap\n"


VARIANTS: dict[str, Variant] = {
    "stop-start": Variant("stop-start", stop_start),
    "stop-start+snapshot": Variant("stop-start+snapshot", stop_start, snapshot),
    "handover": Variant("handover", handover),
    "handover+snapshot": Variant("handover+snapshot", handover, snapshot),
}


class Upstream:
    """A FakeUpstream answering after UPSTREAM_DELAY, noting when each query came."""

    def __init__(self) -> None:
        self.up = FakeUpstream()
        self.times: list[float] = []
        self.lock = threading.Lock()

        def handler(q: Any, proto: str) -> Reply:
            with self.lock:
                self.times.append(time.monotonic())
            return Reply(a_records(q, 1, 600), delay=UPSTREAM_DELAY)

        self.up.handler = handler

    def between(self, a: float, b: float) -> int:
        with self.lock:
            return sum(1 for t in self.times if a <= t < b)


def run(v: Variant, args: argparse.Namespace) -> Figures:
    rng = random.Random(12)
    names = [f"n{rng.randrange(args.names)}.bench.example." for _ in range(args.rate * 60)]

    up = Upstream()
    with up.up, tempfile.TemporaryDirectory(prefix="linkdns-restart-") as d:
        tmp = Path(d)
        port = free_port()
        conf = tmp / "Corefile"
        conf.write_text(f".:{port} {{\n  bind 127.0.0.1\n  cache 600 {{\n{v.cache(tmp)}  }}\n"
                        f"  forward . {up.up.addr}\n}}\n")
        old = Daemon("-conf", str(conf))
        old.wait_for("linkdns-")
        new: Daemon | None = None
        try:
            with Load(port, args.proto, rate=args.rate, names=names,
                      limit=args.warm + args.after + 30) as load:
                time.sleep(args.warm)
                warm = up.between(0, time.monotonic())
                new = v.replace(Ctx(conf, port, old, tmp))
                serving = time.monotonic()
                time.sleep(args.after)
            r = load.result
            return Figures(v.name, r.sent, r.failed, r.timeouts, len(r.errors),
                           round(r.max_gap * 1000, 1), round(r.max_latency * 1000, 1),
                           up.between(serving, serving + WINDOW), warm)
        finally:
            for p in (old, new):
                if p is not None and p.p.poll() is None:
                    p.stop()


def table(rows: list[Figures]) -> str:
    out = ["| variant | queries sent | failed (timeouts / errors) | longest gap | "
           "slowest answer | upstream queries, new instance's first 10 s |",
           "|---|---:|---:|---:|---:|---:|"]
    for f in rows:
        out.append(f"| {f.variant} | {f.sent} | {f.failed} ({f.timeouts} / {f.errors}) | "
                   f"{f.longest_gap_ms:.0f} ms | {f.slowest_answer_ms:.0f} ms | "
                   f"{f.upstream_first_10s} |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="*", metavar="VARIANT",
                   help=f"any of {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--rate", type=int, default=500, help="queries a second (default 500)")
    p.add_argument("--names", type=int, default=2000, help="working set (default 2000)")
    p.add_argument("--warm", type=float, default=4.0, help="seconds before the restart")
    p.add_argument("--after", type=float, default=WINDOW + 1,
                   help="seconds of load after the new instance serves")
    p.add_argument("--proto", choices=["udp", "tcp"], default="udp")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    rows = [run(VARIANTS[name], args) for name in args.variants or VARIANTS]
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
