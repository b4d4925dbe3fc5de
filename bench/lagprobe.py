#!/usr/bin/env python3
"""Run linkdns with an event-loop lag probe, for the p99 investigation (bench/run.py
``--lagprobe``); not part of the daemon.

    python bench/lagprobe.py -conf Corefile      # same flags as `python -m linkdns`

A timer due every millisecond measures how late it fires. At every tick it reads the main
thread's ``/proc/thread-self/schedstat`` (time on a CPU, time runnable but waiting for one),
so each lag over LAGPROBE_MIN_MS (default 2) is recorded with what happened inside it: the
datagrams the UDP listeners took in, the thread's CPU time, its run-queue wait, the CPU's
hypervisor steal (``/proc/stat``, sampled every 10 ticks and at each lag) and the garbage
collections (``gc.callbacks``). What is left (lag minus CPU, wait and steal) is time the
thread was blocked. On exit the record goes to LAGPROBE_OUT as JSON. What the probe costs:
a counter per datagram, a timer callback and a small file read per ms (~0.5% of a core).
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
from linkdns.server import udp
from linkdns.server.lifecycle import Server

_mono = time.monotonic
MIN_LAG = float(os.environ.get("LAGPROBE_MIN_MS", "2")) / 1000
STATE: dict[str, Any] = {"datagrams": 0, "lags": [], "gcs": [], "timeline": []}


def _schedstat() -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting) of this process's main thread."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            run, wait = f.read().split()[:2]
        return int(run) / 1e9, int(wait) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def _steal() -> float:
    """Seconds of hypervisor steal on the CPU this thread runs on (all CPUs if unknown)."""
    try:
        cpu = os.sched_getaffinity(0)
        name = f"cpu{next(iter(cpu))}" if len(cpu) == 1 else "cpu"
        with open("/proc/stat") as f:
            for line in f:
                parts = line.split()
                if parts[0] == name:
                    return int(parts[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _count_datagrams() -> None:
    real = udp.UDPProtocol.datagram_received

    def counted(self: udp.UDPProtocol, data: bytes, addr: Any) -> None:
        STATE["datagrams"] += 1
        real(self, data, addr)

    udp.UDPProtocol.datagram_received = counted  # type: ignore[method-assign]


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
    run, wait = _schedstat()
    prev = {"t": _mono(), "due": _mono() + period, "dg": 0, "run": run, "wait": wait,
            "steal": _steal(), "ticks": 0}

    def tick() -> None:
        now = _mono()
        lag = now - prev["due"]
        run, wait = _schedstat()
        prev["ticks"] += 1
        if lag > MIN_LAG:
            steal = _steal()
            STATE["lags"].append({
                "t": prev["due"], "ms": 1000 * lag, "interval_ms": 1000 * (now - prev["t"]),
                "datagrams": STATE["datagrams"] - prev["dg"],
                "cpu_ms": 1000 * (run - prev["run"]), "runq_wait_ms": 1000 * (wait - prev["wait"]),
                "steal_ms": 1000 * (steal - prev["steal"]), "gcs": len(STATE["gcs"])})
            prev["steal"] = steal
        elif prev["ticks"] % 10 == 0:
            prev["steal"] = _steal()
        if prev["ticks"] % 100 == 0:
            STATE["timeline"].append((now, STATE["datagrams"], wait))
        prev.update(t=now, due=now + period, dg=STATE["datagrams"], run=run, wait=wait)
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
    """The lags that started in [t0, t1] (monotonic, as the harness saw the probe), each
    with its cause: ``gc`` (a collection took at least half of it), ``cpu-wait`` (runnable
    but another task had the CPU, at least half), ``steal`` (the hypervisor had the vCPU, at
    least half), ``busy`` (the thread ran for at least half of it: callbacks, datagrams) or
    ``blocked`` (none of these: off the CPU and not waiting for it)."""
    try:
        st = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"error": f"no lag record at {path}"}
    lags = [g for g in st["lags"] if t0 <= g["t"] <= t1]
    gcs = [g for g in st["gcs"] if t0 - 0.2 <= g["t"] <= t1]
    out: list[dict[str, Any]] = []
    for g in lags:
        end = g["t"] + g["ms"] / 1000
        start = end - g["interval_ms"] / 1000
        gc_ms = sum(c["ms"] for c in gcs if c["t"] <= end and c["t"] + c["ms"] / 1000 >= start)
        span = g["interval_ms"]
        cause = ("gc" if gc_ms >= span / 2 else "cpu-wait" if g["runq_wait_ms"] >= span / 2
                 else "steal" if g["steal_ms"] >= span / 2 else "busy"
                 if g["cpu_ms"] >= span / 2 else "blocked")
        out.append({"t": round(g["t"] - t0, 4), "lag_ms": round(g["ms"], 2),
                    "interval_ms": round(span, 2), "cause": cause,
                    "cpu_ms": round(g["cpu_ms"], 2), "runq_wait_ms": round(g["runq_wait_ms"], 2),
                    "steal_ms": round(g["steal_ms"], 1), "gc_ms": round(gc_ms, 2),
                    "datagrams": g["datagrams"]})
    big = [x for x in out if x["lag_ms"] >= 5]
    causes = ("gc", "cpu-wait", "steal", "busy", "blocked")
    return {
        "lags_over_2ms": len(out),
        "lags_over_5ms": len(big),
        "lags_over_10ms": sum(1 for x in out if x["lag_ms"] >= 10),
        "max_lag_ms": max((x["lag_ms"] for x in out), default=0.0),
        "lag_ms_total": round(sum(x["lag_ms"] for x in out), 1),
        "by_cause_over_2ms": {c: sum(1 for x in out if x["cause"] == c) for c in causes},
        "by_cause_over_5ms": {c: sum(1 for x in big if x["cause"] == c) for c in causes},
        "gcs": len(gcs),
        "gc_gen2": sum(1 for c in gcs if c["gen"] == 2),
        "gc_max_ms": round(max((c["ms"] for c in gcs), default=0.0), 2),
        "worst": sorted(out, key=lambda x: -x["lag_ms"])[:8],
    }
