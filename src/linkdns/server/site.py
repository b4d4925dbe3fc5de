"""Site: the runtime of one server block (its zones, plugin chain, hit hook and counters)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from linkdns import plugin
from linkdns.config import SiteConfig
from linkdns.plugin import Handler, SetupPlugin
from linkdns.wire import Query

if TYPE_CHECKING:
    from linkdns.server.core import Server

log = logging.getLogger("linkdns.server")

C = TypeVar("C")


class HitCache(Protocol):
    """What the hit path needs from a cache plugin."""

    def hit(self, q: Query, size: int) -> bytes | None:
        """A complete reply for ``q`` (client's ID, question, flags, TTLs, OPT) that fits in
        ``size`` bytes, or None (miss, stale, too big: the slow path decides)."""

    def hit_wire(self, key: bytes, data: bytes, qe: int, opt: bytes,
                 size: int) -> bytes | None:
        """The same from the datagram itself: the cache ``key`` (as ``Query.key``), the
        client's ``data`` (ID, question up to ``qe``), the ``opt`` our reply carries."""


class Site:
    """One server block at run time. Rebuildable: a reload makes a new Site and swaps it in."""

    def __init__(self, cfg: SiteConfig, server: Server) -> None:
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

    @property
    def shared(self) -> dict[str, Any]:
        """State shared between sites of one server (e.g. one HTTP listener per address)."""
        return self.server.shared

    @property
    def registry(self) -> Any:
        return self.server.registry

    def collector(self, key: str, make: Callable[[], C]) -> C:
        """The scrape-time collector stored under ``key``: made by ``make()`` and registered
        in the server's registry on first use, then shared by every block (and kept across a
        reload, so counts carry on)."""
        c = self.shared.get(key)
        if c is None:
            c = self.shared[key] = make()
            self.registry.register(c)
        return c

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
            if hasattr(h, "hit_wire") and getattr(h, "name", "") == "cache":
                self.cache = cast(HitCache, h)
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
