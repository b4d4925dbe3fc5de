#!/usr/bin/env python3
"""Run linkdns with an event-loop lag probe, for the p99 investigation (bench/run.py
``--lagprobe``); not part of the daemon.

    python bench/lagprobe.py -conf Corefile      # same flags as `python -m linkdns`

A timer due every millisecond measures how late it fires (the loop was busy or the process
had no CPU). Each lag over LAGPROBE_MIN_MS (default 2) is recorded with: when (monotonic),
how long, the datagrams the UDP listeners had received so far, the garbage collections so far
and the time the process had spent runnable but not running (``/proc/self/schedstat``, field
2) so far. Every garbage collection is recorded (generation, start, duration) through
``gc.callbacks``. On exit the record goes to LAGPROBE_OUT as JSON, with the datagram count
and run-queue wait sampled every 100 ms as a time line. What the probe itself costs: one
counter increment per datagram, one timer callback per ms.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from linkdns import cli
from linkdns.server import listen
from linkdns.server.core import Server

_mono = time.monotonic
MIN_LAG = float(os.environ.get("LAGPROBE_MIN_MS", "2")) / 1000
STATE: dict[str, Any] = {"datagrams": 0, "lags": [], "gcs": [], "timeline": []}


def _runq_wait() -> float:
    """Seconds this process's main thread spent runnable but waiting for a CPU."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except OSError:
        return 0.0


def _count_datagrams() -> None:
    real = listen.UDPProtocol.datagram_received

    def counted(self: listen.UDPProtocol, data: bytes, addr: Any) -> None:
        STATE["datagrams"] += 1
        real(self, data, addr)

    listen.UDPProtocol.datagram_received = counted  # type: ignore[method-assign]


def _gc_hook() -> None:
    started: dict[str, float] = {}

    def cb(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["t"] = _mono()
        else:
            t0 = started.get("t", _mono())
            STATE["gcs"].append({"t": t0, "gen": info.get("generation"),
                                 "ms": 1000 * (_mono() - t0),
                                 "collected": info.get("collected")})

    gc.callbacks.append(cb)


def _install(loop: asyncio.AbstractEventLoop) -> None:
    period = 0.001
    due = [_mono() + period]
    last_sample = [0.0]

    def tick() -> None:
        now = _mono()
        lag = now - due[0]
        if lag > MIN_LAG:
            STATE["lags"].append({"t": due[0], "ms": 1000 * lag,
                                  "datagrams": STATE["datagrams"], "gcs": len(STATE["gcs"]),
                                  "runq_wait_s": _runq_wait()})
        if now - last_sample[0] >= 0.1:
            last_sample[0] = now
            STATE["timeline"].append((now, STATE["datagrams"], _runq_wait()))
        due[0] = now + period
        loop.call_at(loop.time() + period, tick)

    loop.call_soon(tick)


def main() -> int:
    out = os.environ.get("LAGPROBE_OUT", "lagprobe.json")
    _count_datagrams()
    _gc_hook()
    real_start = Server.start

    async def start(self: Server) -> None:
        await real_start(self)
        _install(asyncio.get_running_loop())

    Server.start = start  # type: ignore[method-assign]
    try:
        return cli.main(sys.argv[1:])
    finally:
        STATE["min_lag_ms"] = MIN_LAG * 1000
        Path(out).write_text(json.dumps(STATE))


if __name__ == "__main__":
    sys.exit(main())


def summarize(path: Path, t0: float, t1: float) -> dict[str, Any]:
    """The lags that started in [t0, t1] (monotonic, as the harness saw the probe), and what
    each coincided with: a garbage collection, run-queue wait (the process was runnable but
    off the CPU for at least half the lag), or neither (the loop itself was busy)."""
    try:
        st = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"error": f"no lag record at {path}"}
    lags = [g for g in st["lags"] if t0 <= g["t"] <= t1]
    gcs = [g for g in st["gcs"] if t0 - 0.2 <= g["t"] <= t1]
    tl = st["timeline"]
    out: list[dict[str, Any]] = []
    for g in lags:
        start, end = g["t"], g["t"] + g["ms"] / 1000
        before = [p for p in tl if p[0] <= start]
        wait0 = before[-1][2] if before else g["runq_wait_s"]
        dg0 = before[-1][1] if before else g["datagrams"]
        t_prev = before[-1][0] if before else start
        in_gc = [c for c in gcs if c["t"] <= end and c["t"] + c["ms"] / 1000 >= start - 0.001]
        waited_ms = 1000 * (g["runq_wait_s"] - wait0)
        cause = ("gc" if in_gc and sum(c["ms"] for c in in_gc) >= g["ms"] / 2
                 else "cpu-wait" if waited_ms >= g["ms"] / 2 else "busy")
        out.append({"t": round(start - t0, 4), "ms": round(g["ms"], 2), "cause": cause,
                    "runq_wait_ms_since_last_sample": round(waited_ms, 2),
                    "datagrams_since_last_sample": g["datagrams"] - dg0,
                    "sample_age_ms": round(1000 * (start - t_prev), 1),
                    "gc_ms": round(sum(c["ms"] for c in in_gc), 2)})
    big = [x for x in out if x["ms"] >= 5]
    return {
        "lags_over_2ms": len(out),
        "lags_over_5ms": len(big),
        "lags_over_10ms": sum(1 for x in out if x["ms"] >= 10),
        "max_lag_ms": max((x["ms"] for x in out), default=0.0),
        "lag_ms_total": round(sum(x["ms"] for x in out), 1),
        "by_cause_over_5ms": {c: sum(1 for x in big if x["cause"] == c)
                              for c in ("gc", "cpu-wait", "busy")},
        "gcs": len(gcs),
        "gc_gen2": sum(1 for c in gcs if c["gen"] == 2),
        "gc_max_ms": round(max((c["ms"] for c in gcs), default=0.0), 2),
        "worst": sorted(out, key=lambda x: -x["ms"])[:8],
    }
