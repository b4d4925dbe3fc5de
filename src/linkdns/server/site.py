"""Site: the runtime of one server block (its zones, plugin chain, hit hook and counters).

A Site is also the plugins' environment (:class:`linkdns.plugin.Env`): the only way a plugin
reaches the server it runs in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from linkdns import http, plugin
from linkdns.config import SiteConfig, build_sites
from linkdns.corefile import load_corefile
from linkdns.plugin import Handler, HitCache, SetupPlugin

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from linkdns.clock import Clock
    from linkdns.workers import Worker

log = logging.getLogger("linkdns.server")

C = TypeVar("C")


class Owner(Protocol):
    """What a Site uses of the server that owns it (server/lifecycle.py's Server)."""

    registry: CollectorRegistry
    clock: Clock
    worker: Worker | None
    started: asyncio.Event
    stopping: bool
    handed_over: bool
    handover_hooks: list[Callable[[], None]]
    source: str | None
    dns_port: int
    reuse_port: bool
    sites: list[Site]
    background: dict[str, asyncio.Task[Any]]
    http_servers: dict[tuple[str, int], http.HTTPServer]
    kept: dict[str, Any]

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

    def fail(self, msg: str) -> None: ...

    def port(self, host: str = "") -> int: ...

    def take_inherited(self, key: tuple[str, str, int]) -> list[Any] | None: ...

    def label(self, site: Site) -> str: ...

    def expose_metrics(self) -> None: ...

    async def reload(self, cfgs: list[SiteConfig]) -> None: ...


class Site:
    """One server block at run time. Rebuildable: a reload makes a new Site and swaps it in."""

    def __init__(self, cfg: SiteConfig, server: Owner) -> None:
        self.cfg = cfg
        self.server = server
        self.zones = cfg.zones
        self.port = cfg.port
        #: addresses to listen on (bind plugin fills it; empty = all)
        self.addrs: list[str] = []
        self.handlers: list[Handler] = []
        self.setups: list[SetupPlugin] = []
        self.chain: Handler | None = None
        self.cache: HitCache | None = None
        #: hooks of transparent plugins in front of the cache
        self.pre_hit: list[Handler] = []
        self.fast = False
        self._build()

    # -- the plugins' environment (linkdns.plugin.Env) ----------------------------------------

    @property
    def registry(self) -> CollectorRegistry:
        return self.server.registry

    @property
    def clock(self) -> Clock:
        return self.server.clock

    @property
    def worker(self) -> Worker | None:
        return self.server.worker

    @property
    def started(self) -> asyncio.Event:
        return self.server.started

    @property
    def stopping(self) -> bool:
        return self.server.stopping

    @property
    def handed_over(self) -> bool:
        return self.server.handed_over

    @property
    def handover_hooks(self) -> list[Callable[[], None]]:
        return self.server.handover_hooks

    @property
    def source(self) -> str | None:
        return self.server.source

    def label(self) -> str:
        """The ``server`` label: the first listener that routes to this site (``dns://:53``)."""
        return self.server.label(self)

    def collector(self, key: str, make: Callable[[], C]) -> C:
        """The scrape-time collector stored under ``key``: made by ``make()`` and registered
        in the server's registry on first use, then shared by every block (and kept across a
        reload, so counts carry on)."""
        kept = self.server.kept
        c = kept.get(key)
        if c is None:
            c = kept[key] = make()
            registry: Any = self.registry
            registry.register(c)
        return c

    def find(self, key: str) -> Any:
        return self.server.kept.get(key)

    def keep(self, key: str, make: Callable[[], C]) -> C:
        kept = self.server.kept
        c = kept.get(key)
        if c is None:
            c = kept[key] = make()
        return c

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self.server.spawn(coro)

    def background(self, key: str, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        tasks = self.server.background
        t = tasks.get(key)
        if t is None or t.done():
            tasks[key] = asyncio.get_running_loop().create_task(make())

    def fail(self, msg: str) -> None:
        self.server.fail(msg)

    def http(self, host: str, port: int) -> http.HTTPServer:
        servers = self.server.http_servers
        srv = servers.get((host, port))
        if srv is None:
            srv = servers[(host, port)] = http.HTTPServer(
                host, port, self.server.reuse_port, self.server.take_inherited)
        return srv

    def bound_port(self, host: str = "") -> int:
        return self.server.port(host)

    def plugins(self) -> list[Handler | SetupPlugin]:
        return [p for s in self.server.sites for p in s._plugins()]

    def uses(self, name: str) -> bool:
        return any(name in s.cfg.plugins for s in self.server.sites)

    def expose_server_metrics(self) -> None:
        self.server.expose_metrics()

    async def reload(self) -> None:
        server = self.server
        assert server.source is not None
        await server.reload(build_sites(load_corefile(server.source), server.dns_port))

    @property
    def plugin_names(self) -> list[str]:
        return [n for n in plugin.ORDER if n in self.cfg.plugins]

    def _build(self) -> None:
        for name in plugin.ORDER:
            if name not in self.cfg.plugins:
                continue
            spec = plugin.REGISTRY[name]
            conf = self.cfg.plugins[name]
            confs = conf if (not spec.once and spec.parse_all is None) else [conf]
            for c in confs:
                built = spec.build(c, self)
                if isinstance(built, Handler):
                    self.handlers.append(built)
                elif isinstance(built, SetupPlugin):
                    self.setups.append(built)
        for a, b in zip(self.handlers, self.handlers[1:], strict=False):
            a.next = b
        self.chain = self.handlers[0] if self.handlers else None
        # The hit path: every handler in front of the cache must be transparent on hits.
        for h in self.handlers:
            if isinstance(h, HitCache):
                self.cache = h
                break
            if not h.hit_transparent:
                break
            self.pre_hit.append(h)
        self.fast = self.cache is not None

    async def start(self) -> None:
        for p in self._plugins():
            await p.start()

    async def stop(self) -> None:
        for p in reversed(self._plugins()):
            try:
                await p.stop()
            except Exception:
                log.exception("stopping plugin/%s", p.name)

    def not_ready(self) -> list[str]:
        return [p.name for p in self._plugins() if not p.ready()]

    def _plugins(self) -> list[Handler | SetupPlugin]:
        return [*self.setups, *self.handlers]

