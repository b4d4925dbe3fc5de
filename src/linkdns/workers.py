"""``-workers N``: N processes share the DNS and HTTP ports with SO_REUSEPORT.

Each worker has its own cache and counters. A scrape of ``/metrics`` lands on one worker (the
kernel picks); that worker asks every other worker for its exposition over a Unix socket in a
private directory and answers with the sum, so Prometheus sees one linkdns.

The parent only supervises: it forwards SIGTERM/SIGINT to the workers and exits when they
have, with the first non-zero exit code (or 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# Gauges that describe the process rather than count something: merged with max, not sum.
_IDENTITY = {"coredns_build_info", "coredns_plugin_enabled", "process_start_time_seconds",
             "process_max_fds", "process_virtual_memory_max_bytes"}


@dataclass(frozen=True)
class Worker:
    index: int
    count: int
    dir: str
    ready_fd: int = -1  # write end of the parent's "listening" pipe, when it wants to know

    def sock(self, i: int) -> str:
        return os.path.join(self.dir, f"{i}.sock")

    def ready(self) -> None:
        """Tell the parent this worker listens (call once)."""
        if self.ready_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self.ready_fd, b"r")


async def serve_exposition(w: Worker, expose: Callable[[], bytes]) -> asyncio.AbstractServer:
    """Answer every connection on this worker's socket with its own exposition text."""

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(expose())
            await writer.drain()
        finally:
            writer.close()

    path = w.sock(w.index)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return await asyncio.start_unix_server(one, path)


async def gather(w: Worker, own: bytes, timeout: float = 2.0) -> bytes:
    """Own exposition plus every other worker's, summed into one."""

    async def fetch(i: int) -> bytes:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(w.sock(i)), timeout)
            try:
                return await asyncio.wait_for(reader.read(), timeout)
            finally:
                writer.close()
        except (OSError, TimeoutError):
            return b""  # a worker restarting: its share is missing from this scrape

    others = await asyncio.gather(*(fetch(i) for i in range(w.count) if i != w.index))
    return merge([own, *others])


def merge(texts: list[bytes]) -> bytes:
    """Sum Prometheus text expositions sample by sample (max for identity gauges)."""
    order: list[str] = []
    meta: dict[str, tuple[str, str]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for t in texts:
        if not t:
            continue
        for fam in text_string_to_metric_families(t.decode()):
            if fam.name not in meta:
                order.append(fam.name)
                meta[fam.name] = (fam.type, fam.documentation)
                values[fam.name] = {}
            vals = values[fam.name]
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if key in vals:
                    vals[key] = (max(vals[key], s.value) if fam.name in _IDENTITY
                                 else vals[key] + s.value)
                else:
                    vals[key] = s.value
    out: list[str] = []
    for name in order:
        typ, doc = meta[name]
        exposed = name + "_total" if typ == "counter" else name
        out.append(f"# HELP {exposed} {_esc(doc)}")
        out.append(f"# TYPE {exposed} {typ}")
        for (sname, labels), v in values[name].items():
            lab = ",".join(f'{k}="{_esc_label(val)}"' for k, val in labels)
            out.append(f"{sname}{{{lab}}} {_num(v)}" if lab else f"{sname} {_num(v)}")
    return ("\n".join(out) + "\n").encode()


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n")


def _esc_label(s: str) -> str:
    return _esc(s).replace('"', '\\"')


def _num(v: float) -> str:
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v)}.0"
    return repr(v)


def run(count: int, child: Callable[[Worker], int],
        ready: Callable[[], bool] | None = None) -> int:
    """Fork ``count`` workers running ``child(worker)``; supervise until they all exit.

    ``ready`` (node-local mode's node setup) runs in a thread of the parent once every worker
    has called :meth:`Worker.ready`; if it returns False the workers are stopped, exit code 1.
    Only the workers' own PIDs are waited for, so commands the parent runs keep their status.
    """
    d = tempfile.mkdtemp(prefix="linkdns-workers-")
    pids: dict[int, int] = {}
    rfd, wfd = os.pipe() if ready is not None else (-1, -1)
    failed = threading.Event()
    try:
        for i in range(count):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    if rfd >= 0:
                        os.close(rfd)
                    code = child(Worker(i, count, d, wfd))
                finally:
                    os._exit(code)
            pids[pid] = i
        if wfd >= 0:
            os.close(wfd)

        def forward(sig: int, _frame: object) -> None:
            for p in list(pids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, sig)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        if ready is not None:
            def wait_ready() -> None:
                got = 0
                while got < count:
                    b = os.read(rfd, count - got)
                    if not b:
                        return  # workers exited before all of them listened
                    got += len(b)
                if not ready():
                    failed.set()
                    forward(signal.SIGTERM, None)

            threading.Thread(target=wait_ready, name="workers-ready", daemon=True).start()
        fds = {os.pidfd_open(pid): pid for pid in pids}
        rc = 0
        while fds:
            readable, _, _ = select.select(list(fds), [], [])
            for fd in readable:
                pid = fds.pop(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                pids.pop(pid, None)
                code = os.waitstatus_to_exitcode(status)
                if code and not rc:
                    rc = code if code > 0 else 1
                    forward(signal.SIGTERM, None)  # one worker failed: stop the others
        return 1 if failed.is_set() and not rc else rc
    finally:
        if rfd >= 0:
            os.close(rfd)
        shutil.rmtree(d, ignore_errors=True)
