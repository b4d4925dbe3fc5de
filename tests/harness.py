"""Run a linkdns Server from Corefile text in a background thread, and query it with dnspython.

The server gets its own event loop (uvloop, as in production) in a thread, so tests can use
dnspython's blocking client and the FakeUpstream (its own thread) side by side.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
from prometheus_client import CollectorRegistry

from linkdns.cli import new_event_loop
from linkdns.corefile import parse_corefile
from linkdns.server.lifecycle import Server

T = TypeVar("T")

_taken: set[int] = set()


def free_port() -> int:
    """A loopback port free for both UDP and TCP, for a daemon started in a subprocess.

    Picked below the kernel's ephemeral range (32768+), so no socket bound to port 0 -- a test
    client, an upstream pool's random source port -- can take it between this check and the
    daemon's bind; never the same port twice in one test run.
    """
    for _ in range(1000):
        port = random.randint(20000, 32000)
        if port in _taken:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                u.bind(("127.0.0.1", port))
                t.bind(("127.0.0.1", port))
        except OSError:
            continue
        _taken.add(port)
        return port
    raise RuntimeError("no free loopback port in 20000-32000")


class Running:
    """A started linkdns server. ``with Running(corefile) as srv: srv.port``."""

    def __init__(self, corefile: str, dns_port: int = 0, drain: float = 2.0,
                 registry: CollectorRegistry | None = None, source: str | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        blocks = parse_corefile(corefile, source or "Corefile")
        self.server = Server.from_blocks(blocks, dns_port, registry=self.registry,
                                         drain_timeout=drain)
        self.server.source = source  # the file the reload plugin watches
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> Running:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("server did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        async def _c() -> T:
            return fn()
        return self.call(_c(), timeout)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.call(self.server.stop(), timeout=15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            if not self._thread.is_alive():
                self.loop.close()

    @property
    def port(self) -> int:
        return self.server.port()

    def query(self, name: str, rdtype: str = "A", *, tcp: bool = False, timeout: float = 3.0,
              **make_kw: Any) -> dns.message.Message:
        return query(self.port, name, rdtype, tcp=tcp, timeout=timeout, **make_kw)


def query(port: int, name: str, rdtype: str = "A", *, tcp: bool = False,
          timeout: float = 3.0, host: str = "127.0.0.1", **make_kw: Any) -> dns.message.Message:
    """Ask with dnspython (``use_edns=0, payload=1232`` etc. pass through to make_query)."""
    q = dns.message.make_query(name, rdtype, **make_kw)
    if tcp:
        return dns.query.tcp(q, host, port=port, timeout=timeout)
    return dns.query.udp(q, host, port=port, timeout=timeout, ignore_trailing=False,
                         raise_on_truncation=False)


def raw(port: int, data: bytes, timeout: float = 1.0, host: str = "127.0.0.1") -> bytes | None:
    """Send raw bytes over UDP; the reply bytes or None on timeout."""
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(data, (host, port))
        return s.recv(65535)
    except TimeoutError:
        return None
    finally:
        s.close()


def http_get(port: int, path: str, *, host: str = "127.0.0.1", method: str = "GET",
             headers: dict[str, str] | None = None,
             timeout: float = 3.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to a linkdns endpoint: (status, lowercased headers, body)."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def setup_plugin(srv: Running, name: str, site: int = 0) -> Any:
    """The setup-only plugin object ``name`` of a block (e.g. to read its bound ``port``)."""
    return next(p for p in srv.server.sites[site].setups if p.name == name)
