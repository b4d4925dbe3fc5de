"""health: ``GET /health`` answers 200 ``OK`` while the process runs; optional lame duck.

Setup-only. On a graceful stop (SIGTERM) with ``lameduck DURATION`` the server keeps
answering queries and ``/health`` for DURATION before it stops taking queries (the *ready*
endpoint answers 503 ``Shutting down`` meanwhile). Once a second the plugin fetches its own
``/health`` and records how long that took (coredns_health_request_duration_seconds) or that
it failed (coredns_health_request_failures_total): a slow answer means an overloaded process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from linkdns import http, metrics, values
from linkdns.corefile import Directive
from linkdns.errors import ConfigError
from linkdns.plugin import Env, HTTPPlugin, PluginSpec, parse_addr, register

log = logging.getLogger("linkdns.plugin.health")

DEFAULT_ADDR = ":8080"
PATH = "/health"
CHECK_INTERVAL = 1.0  # seconds between self-checks (CoreDNS: 1s)
CHECK_TIMEOUT = 3.0  # CoreDNS: 3s client timeout
SLOW = 1.0  # a local check slower than this is logged


@dataclass(frozen=True)
class HealthConfig:
    host: str = ""
    port: int = 8080
    lameduck: float = 0.0


def parse(d: Directive) -> HealthConfig:
    host, port = parse_addr(d, DEFAULT_ADDR)
    lameduck = 0.0
    for sub in d.block or []:
        if sub.name != "lameduck":
            raise ConfigError(f"unknown property '{sub.name}'", sub.file, sub.line, "health")
        if len(sub.args) != 1:
            raise ConfigError(f"Wrong argument count or unexpected line ending after "
                              f"'{sub.name}'", sub.file, sub.line, "health")
        try:
            lameduck = values.parse_duration(sub.args[0])
        except ValueError as e:
            raise ConfigError(f"unable to parse lameduck duration value: {sub.args[0]!r}: {e}",
                              sub.file, sub.line, "health") from None
    return HealthConfig(host, port, lameduck)


async def probe(host: str, port: int, timeout: float = CHECK_TIMEOUT) -> bool:
    """GET /health on host:port; True on a 200."""
    async def get() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                         .encode())
            await writer.drain()
            return await reader.read(1024)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        head = await asyncio.wait_for(get(), timeout)
    except (OSError, TimeoutError):
        return False
    return head.startswith(b"HTTP/1.1 200 ")


def local_host(host: str) -> str:
    """Where the self-check connects for a listener bound on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


class Health(HTTPPlugin):
    name = "health"

    def __init__(self, srv: http.HTTPServer, lameduck: float, stats: metrics.HealthStats) -> None:
        super().__init__(srv)
        self.duration = lameduck
        self.stats = stats
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.interval = CHECK_INTERVAL
        #: set after every self-check (tests await it)
        self.checked = asyncio.Event()
        #: set when lame duck mode begins
        self.in_lameduck = asyncio.Event()

    def handle(self, req: http.Request) -> http.Response:
        return http.text(200, "OK")

    async def start(self) -> None:
        await super().start()
        self.stopping = False
        self.task = asyncio.get_running_loop().create_task(self._self_check())

    async def check_once(self, host: str, port: int) -> bool:
        t0 = time.perf_counter()
        ok = await probe(host, port)
        elapsed = time.perf_counter() - t0
        self.stats.duration.observe(elapsed)
        url = f"http://{host}:{port}{PATH}"
        if not ok:
            self.stats.failures += 1
            log.warning("Local health request to %r failed", url)
        elif elapsed > SLOW:
            log.warning("Local health request to %r took more than 1s: %.3fs", url, elapsed)
        self.checked.set()
        return ok

    async def _self_check(self) -> None:
        # The flag, not only cancel(): on Python 3.11 the wait_for in probe() swallows a
        # cancel that lands as the request completes, and stop() would wait here forever.
        while not self.stopping:
            await asyncio.sleep(self.interval)
            self.checked.clear()
            await self.check_once(local_host(self.http.host), self.http.port)

    async def lameduck(self) -> None:
        """Keep serving for the lame duck duration (the server calls this before it stops
        taking queries)."""
        if self.duration <= 0:
            return
        log.info("Going into lameduck mode for %s", _fmt(self.duration))
        self.in_lameduck.set()
        await asyncio.sleep(self.duration)

    async def stop(self) -> None:
        self.stopping = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        await super().stop()


def _fmt(secs: float) -> str:
    return f"{secs:g}s"


def build(cfg: HealthConfig, env: Env) -> Health:
    srv = env.http(cfg.host, cfg.port)
    h = Health(srv, cfg.lameduck, metrics.register_health(env))
    srv.route(PATH, h.handle)
    return h


register(PluginSpec("health", parse, build))
