"""The restart drill: linkdns daemons in subprocesses and a client at a fixed query rate.

:class:`Load` sends ``rate`` queries a second over UDP (one socket per query, as many stub
resolvers do) or TCP (a connection per query), each with a 1 s timeout and no retry, from
its own thread and event loop, and reports what failed and the longest time no answer
came back. :class:`Daemon` runs ``python -m linkdns`` and collects its output. Used by
tests/test_handover.py and bench/restart.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dns.message
import dns.rcode

PY = sys.executable


class Daemon:
    """``python -m linkdns ARGS``, its output collected line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], object] | None = None) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.p = subprocess.Popen([PY, "-m", "linkdns", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, **env} if env else None,
                                  preexec_fn=preexec_fn)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    @property
    def pid(self) -> int:
        return self.p.pid

    @property
    def out(self) -> str:
        with self.cond:
            return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 15.0) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(text in x for x in self.lines) or
                                    self.p.poll() is not None, timeout)
            found = any(text in x for x in self.lines)
        assert ok and found, f"no {text!r} in output:\n{self.out}"

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` (None: nothing) and wait for the exit status."""
        if sig is not None and self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            rc = self.p.wait(timeout=timeout)
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait()
        self.reader.join(5)
        assert self.p.stdout is not None
        self.p.stdout.close()
        return rc


def corefile(path: Path, port: int, upstream: str, ready: int, metrics: int,
             extra: str = "") -> Path:
    path.write_text(f".:{port} {{\n  bind 127.0.0.1\n  ready 127.0.0.1:{ready}\n"
                    f"  prometheus 127.0.0.1:{metrics}\n  cache 30\n{extra}"
                    f"  forward . {upstream}\n}}\n")
    return path


@dataclass
class Result:
    proto: str
    sent: int = 0
    answered: int = 0
    timeouts: int = 0
    errors: list[str] = field(default_factory=list)
    #: the longest time with queries outstanding and no answer coming back (seconds)
    max_gap: float = 0.0
    max_latency: float = 0.0
    #: the most the client itself fell behind its sending schedule (seconds): large when the
    #: load process was starved of CPU (then its timeouts say little about the server)
    max_lag: float = 0.0
    #: monotonic send times of the queries that failed
    failed_at: list[float] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.timeouts + len(self.errors)

    def __str__(self) -> str:
        return (f"{self.proto}: sent {self.sent}, answered {self.answered}, "
                f"timed out {self.timeouts}, errors {len(self.errors)} {self.errors[:3]}, "
                f"longest gap {self.max_gap * 1000:.0f} ms, "
                f"slowest answer {self.max_latency * 1000:.0f} ms, "
                f"client behind by up to {self.max_lag * 1000:.0f} ms")


def default_name(i: int) -> str:
    """Three in four names new (cache misses, in flight at the upstream), one a hit."""
    return f"hot{i % 16}.drill.example." if i % 4 == 0 else f"q{i}.drill.example."


class Load:
    """Queries at ``rate``/s to ``host``:``port`` until :meth:`stop`, from a process of its
    own (``python drill.py``: the test's upstream and log readers do not slow it down, nor
    it them). ``names`` (cycled) or :func:`default_name`. ``enter`` runs first in the load's
    process (e.g. to enter a network namespace)."""

    def __init__(self, port: int, proto: str = "udp", rate: int = 500, timeout: float = 1.0,
                 names: Sequence[str] | None = None, limit: float = 30.0,
                 host: str = "127.0.0.1", enter: Callable[[], None] | None = None) -> None:
        self.timeout = timeout
        self.limit = limit  # seconds: the load ends by itself after this, whatever happens
        self.result = Result(proto)
        self.enter = enter
        self.args = {"host": host, "port": port, "proto": proto, "rate": rate, "timeout": timeout,
                     "names": list(names or ()), "limit": limit}
        self.p: subprocess.Popen[str] | None = None

    def __enter__(self) -> Load:
        self.p = subprocess.Popen([PY, __file__], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, preexec_fn=self.enter)
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(json.dumps(self.args) + "\n")
        self.p.stdin.flush()
        if self.p.stdout.readline().strip() != "started":
            raise RuntimeError("the load process did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Result:
        """Stop sending; wait for what is outstanding (its timeout at most)."""
        p = self.p
        if p is None:
            return self.result
        self.p = None
        try:
            out, _ = p.communicate("stop\n", timeout=self.limit + self.timeout + 10)
            self.result = Result(**json.loads(out))
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        return self.result


class SlowUpstream:
    """A FakeUpstream answering every query (A 192.0.2.1) after ``delay`` seconds, in a
    process of its own (``python drill.py upstream DELAY``), so that the test process's
    other threads never slow the answers the drill's client is waiting for. ``enter`` runs
    first in that process (e.g. to enter a network namespace, as for :class:`Load`)."""

    def __init__(self, delay: float, enter: Callable[[], None] | None = None) -> None:
        self.delay = delay
        self.enter = enter
        self.addr = ""  # HOST:PORT, UDP and TCP
        self.port = 0
        self.p: subprocess.Popen[str] | None = None

    def __enter__(self) -> SlowUpstream:
        self.p = subprocess.Popen([PY, __file__, "upstream", str(self.delay)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  preexec_fn=self.enter)
        assert self.p.stdout is not None
        self.addr = self.p.stdout.readline().strip()
        if not self.addr:
            self.__exit__()
            raise RuntimeError("the upstream process did not start")
        self.port = int(self.addr.rsplit(":", 1)[1])
        return self

    def __exit__(self, *exc: object) -> None:
        p, self.p = self.p, None
        if p is None:
            return
        try:
            p.communicate("stop\n", timeout=10)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def _upstream_main(delay: float) -> None:
    from fakeupstream import FakeUpstream, Reply, a_records

    with FakeUpstream() as up:
        up.handler = lambda q, proto: Reply(a_records(q, 1), delay=delay)
        print(up.addr, flush=True)
        sys.stdin.readline()


def _load_main() -> None:
    """The load process: arguments as one JSON line on stdin, "started", then the result
    as JSON once stdin says stop (or closes)."""
    a = json.loads(sys.stdin.readline())
    client = _Client(a["host"], a["port"], a["proto"], a["rate"], a["timeout"], a["names"],
                     a["limit"])
    stop = threading.Event()

    def wait_stop() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_stop, daemon=True).start()
    asyncio.run(client.run(stop, lambda: print("started", flush=True)))
    print(json.dumps(asdict(client.result)), flush=True)


class _Client:
    """The load itself, in the load process."""

    def __init__(self, host: str, port: int, proto: str, rate: int, timeout: float,
                 names: list[str], limit: float) -> None:
        self.host = host
        self.port = port
        self.proto = proto
        self.rate = rate
        self.timeout = timeout
        self.names = names
        self.limit = limit
        self.result = Result(proto)
        self.answers: list[float] = []  # monotonic times answers arrived

    def name(self, i: int) -> str:
        return self.names[i % len(self.names)] if self.names else default_name(i)

    async def run(self, stop: threading.Event, started: Callable[[], None]) -> None:
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()
        started()
        i = 0
        while not stop.is_set() and time.monotonic() - t0 < self.limit:
            due = int((time.monotonic() - t0) * self.rate)
            self.result.max_lag = max(self.result.max_lag, (due - i - 1) / self.rate)
            while i < due:
                t = asyncio.ensure_future(self._one(i))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                i += 1
            await asyncio.sleep(1 / self.rate)
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout + 1)
        end = time.monotonic()
        r = self.result
        r.sent = i
        times = [t0, *sorted(self.answers), end]
        r.max_gap = max(b - a for a, b in itertools.pairwise(times))

    async def _one(self, i: int) -> None:
        q = dns.message.make_query(self.name(i), "A")
        q.id = i & 0xFFFF
        wire = q.to_wire()
        start = time.monotonic()
        try:
            data = await asyncio.wait_for(
                self._udp(wire) if self.proto == "udp" else self._tcp(wire), self.timeout)
        except TimeoutError:
            self.result.timeouts += 1
            self.result.failed_at.append(start)
            return
        except OSError as e:
            self.result.errors.append(f"#{i}: {e!r}")
            self.result.failed_at.append(start)
            return
        now = time.monotonic()
        try:
            reply = dns.message.from_wire(data)
        except Exception as e:  # any garbage is a failed lookup
            self.result.errors.append(f"#{i}: {e!r}")
            self.result.failed_at.append(start)
            return
        if reply.id != q.id or reply.rcode() != dns.rcode.NOERROR or not reply.answer:
            self.result.errors.append(f"#{i}: {dns.rcode.to_text(reply.rcode())} "
                                      f"{len(reply.answer)} answers")
            self.result.failed_at.append(start)
            return
        self.result.answered += 1
        self.result.max_latency = max(self.result.max_latency, now - start)
        self.answers.append(now)

    async def _udp(self, wire: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                if not got.done():
                    got.set_result(data)

            def error_received(self, exc: Exception) -> None:
                if not got.done():
                    got.set_exception(exc)

        tr, _ = await loop.create_datagram_endpoint(
            Proto, remote_addr=(self.host, self.port))
        try:
            tr.sendto(wire)
            return await got
        finally:
            tr.close()

    async def _tcp(self, wire: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(len(wire).to_bytes(2, "big") + wire)
            await writer.drain()
            n = int.from_bytes(await reader.readexactly(2), "big")
            return await reader.readexactly(n)
        except asyncio.IncompleteReadError as e:
            raise ConnectionResetError(f"connection closed after {len(e.partial)} bytes") \
                from None
        finally:
            writer.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":
    if sys.argv[1:2] == ["upstream"]:
        _upstream_main(float(sys.argv[2]))
    else:
        _load_main()
