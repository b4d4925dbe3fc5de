"""The plugin contract, the registry and the one table that fixes the execution order.

Contract (CoreDNS's): ``async def serve(req, w) -> rcode``, and the rcode alone says who
answers. SERVFAIL, REFUSED, FORMERR or NOTIMP: nothing was written, the server writes the
error reply. :data:`DROPPED`: nothing is sent on purpose. Any other rcode: the plugin already
wrote the reply through ``w``.

Each plugin registers a :class:`PluginSpec`: a pure ``parse(directive) -> config`` (testable
without a server, raising ConfigError with file:line) and a ``build(config, env)`` that makes
the runtime object. ``env`` is an :class:`Env`: the narrow view of the server a plugin gets
(CoreDNS's setup controller), implemented by the server block's Site; no plugin imports
``linkdns.server``. Setup-only plugins (bind, health, ready, reload, prometheus) return an
object that is not a handler: it only hooks start-up and shut-down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, runtime_checkable

from linkdns import http, values, wire
from linkdns.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from linkdns.clock import Clock
    from linkdns.corefile import Directive
    from linkdns.request import Request
    from linkdns.wire import Query
    from linkdns.workers import Worker
    from linkdns.writer import Writer

C = TypeVar("C")

# CoreDNS plugin.cfg order (the subset linkdns knows); earlier = runs first.
ORDER: tuple[str, ...] = (
    "reload", "bufsize", "bind", "ready", "health", "prometheus", "errors", "log", "acl",
    "loadbalance", "cache", "template", "hosts", "loop", "forward",
)

# Rcodes that mean "nothing written, the server must answer".
ERROR_RCODES = frozenset({wire.SERVFAIL, wire.REFUSED, wire.FORMERR, wire.NOTIMP})

#: The rcode of a query answered with nothing on purpose (acl's ``drop``): the server sends no
#: reply, counts a drop and no response. An rcode of its own, past the 12 bits of the extended
#: rcodes; to the handlers before it, it reads as "written" (``client_wrote`` is true), as
#: CoreDNS's ``return dns.RcodeSuccess`` does.
DROPPED = 0x1000


def client_wrote(rc: int) -> bool:
    """True when a handler that returned ``rc`` already wrote its reply."""
    return rc not in ERROR_RCODES



class Handler:
    """A plugin in the query chain."""

    name: ClassVar[str] = ""
    #: True when the plugin has no effect on a cache hit, so the hit path may skip it.
    hit_transparent: ClassVar[bool] = False
    #: True when the hit path must call :meth:`hit_size` / :meth:`hit_rewrite` (a plugin in
    #: front of the cache that lowers the client's size, or rewrites a hit's reply)
    hit_sizes: ClassVar[bool] = False
    hit_rewrites: ClassVar[bool] = False
    #: True for a plugin that answers from an upstream of its own: forward's ``next RCODE...``
    #: hands a reply with one of those rcodes on only to such a plugin (CoreDNS: another forward)
    upstream_alternative: ClassVar[bool] = False

    def __init__(self) -> None:
        self.next: Handler | None = None

    async def serve(self, req: Request, w: Writer) -> int:
        raise NotImplementedError

    async def next_serve(self, req: Request, w: Writer) -> int:
        """Call the next plugin; a chain that falls off its end answers SERVFAIL."""
        if self.next is None:
            return wire.SERVFAIL
        return await self.next.serve(req, w)

    # Lifecycle and readiness hooks (all optional).
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def ready(self) -> bool:
        return True

    # Hit-path hooks (see server/frontdoor.py): adjust the client's size, rewrite a hit reply.
    def hit_size(self, size: int) -> int:
        return size

    def hit_rewrite(self, reply: bytearray) -> None:
        return None


@runtime_checkable
class HitCache(Protocol):
    """What the hit path needs from a cache plugin (server/frontdoor.py): a handler that
    has both methods is the block's cache."""

    def hit(self, q: Query, size: int) -> bytes | None:
        """A complete reply for ``q`` (client's ID, question, flags, TTLs, OPT) that fits in
        ``size`` bytes, or None (miss, stale, too big: the slow path decides)."""

    def hit_wire(self, key: bytes, data: bytes, qe: int, opt: bytes,
                 size: int) -> bytes | None:
        """The same from the datagram itself: the cache ``key`` (as ``Query.key``), the
        client's ``data`` (ID, question up to ``qe``), the ``opt`` our reply carries."""


class SetupPlugin:
    """A directive that only hooks start-up/shut-down (bind, health, ready, prometheus...)."""

    name: ClassVar[str] = ""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def ready(self) -> bool:
        return True

    async def lameduck(self) -> None:
        """Called first on a graceful stop, while everything still serves (health waits its
        lame duck duration here); the server stops taking queries when every hook returned."""
        return None


Built = Handler | SetupPlugin | None


class Env(Protocol):
    """What a plugin sees of the server it runs in, given to ``PluginSpec.build``.

    The server block's Site implements it (server/site.py). Everything a plugin needs from
    outside itself comes through here, so no plugin imports ``linkdns.server`` and a test can
    hand a plugin a small fake instead of a server.
    """

    #: the server block's zones (lowercase FQDNs) and port
    zones: list[str]
    port: int
    #: the addresses the block listens on (the bind plugin sets them; empty = all)
    addrs: list[str]

    @property
    def clock(self) -> Clock:
        """The clock plugins age entries by (tests advance it)."""

    @property
    def registry(self) -> CollectorRegistry:
        """The server's Prometheus registry."""

    @property
    def worker(self) -> Worker | None:
        """This worker in ``-workers N`` mode, else None."""

    @property
    def started(self) -> asyncio.Event:
        """Set once the listeners serve."""

    @property
    def stopping(self) -> bool:
        """True from the start of a graceful stop."""

    @property
    def handed_over(self) -> bool:
        """True once a successor serves on this instance's sockets."""

    @property
    def handover_hooks(self) -> list[Callable[[], None]]:
        """Run right before this instance hands its sockets to a successor."""

    @property
    def source(self) -> str | None:
        """The Corefile the server was loaded from (None: given as text)."""

    def label(self) -> str:
        """The ``server`` metric label of this block (``dns://HOST:PORT``, its listener's)."""

    def collector(self, key: str, make: Callable[[], C]) -> C:
        """The object kept under ``key`` for the whole server (kept across a reload), made by
        ``make()`` and registered in the registry on first use."""

    def find(self, key: str) -> Any:
        """What :meth:`collector` or :meth:`keep` holds under ``key``, None if nothing."""

    def keep(self, key: str, make: Callable[[], C]) -> C:
        """Like :meth:`collector`, but not registered (state shared between blocks)."""

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run finite work owned by the server (drained at stop and reload, then cancelled)."""

    def background(self, key: str, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run ``make()`` once per server for its life under ``key`` (cancelled at stop)."""

    def fail(self, msg: str) -> None:
        """A fatal condition: log it, stop the process with exit code 1."""

    def http(self, host: str, port: int) -> http.HTTPServer:
        """The one HTTP listener on (host, port) shared by every block."""

    def bound_port(self, host: str = "") -> int:
        """The port the DNS listener on ``host`` is bound to (port 0 in tests)."""

    def plugins(self) -> list[Handler | SetupPlugin]:
        """Every plugin of every block the server runs now."""

    def uses(self, name: str) -> bool:
        """True when a block the server runs now has the directive ``name``."""

    def expose_server_metrics(self) -> None:
        """Register the server's own coredns_dns_* collector (once)."""

    async def reload(self) -> None:
        """Read the Corefile again and swap the new blocks in (ConfigError if it is bad)."""


@dataclass(frozen=True)
class PluginSpec:
    name: str
    parse: Callable[[Directive], Any]
    build: Callable[[Any, Env], Built]
    #: False when the directive may appear several times in one block (forward).
    once: bool = True
    #: Several directives of the same plugin in one block are merged by ``parse_all``.
    parse_all: Callable[[list[Directive]], Any] | None = None
    #: Checks across server blocks (e.g. a file two blocks may not share): the plugin's parsed
    #: configs of every block that uses it, in Corefile order -> the errors found.
    check_sites: Callable[[list[Any]], list[ConfigError]] | None = None


REGISTRY: dict[str, PluginSpec] = {}


def register(spec: PluginSpec) -> PluginSpec:
    if spec.name not in ORDER:
        raise ValueError(f"plugin {spec.name} has no place in ORDER")
    REGISTRY[spec.name] = spec
    return spec


def load_builtin() -> None:
    """Import every bundled plugin module so it registers itself."""
    import importlib
    import pkgutil

    from linkdns import plugins

    for info in pkgutil.iter_modules(plugins.__path__):
        importlib.import_module(f"linkdns.plugins.{info.name}")


# Helpers for parse functions -------------------------------------------------------------


class Args:
    """Argument helpers for one plugin's ``parse`` (what Caddy's Dispenser offers CoreDNS):
    every error is a ConfigError at the directive's FILE:LINE, named for this plugin even
    when the directive is one of its sub-directives (``cache { prefetch ... }``)."""

    __slots__ = ("plugin",)

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin

    def err(self, d: Directive, msg: str) -> ConfigError:
        return ConfigError(msg, d.file, d.line, self.plugin)

    def argc(self, d: Directive) -> ConfigError:
        """CoreDNS's wording for a wrong number of arguments."""
        return self.err(d, f"Wrong argument count or unexpected line ending after '{d.name}'")

    def zones(self, d: Directive, args: Iterable[str]) -> list[str]:
        """The zones ``args`` name (server-key syntax, reverse CIDRs expanded), in order, once
        each."""
        from linkdns.corefile import parse_server_key

        out: list[str] = []
        try:
            for a in args:
                for k in parse_server_key(a, d.file, d.line):
                    if k.zone not in out:
                        out.append(k.zone)
        except ConfigError as e:
            raise self.err(d, e.msg) from None
        return out

    def duration(self, d: Directive, text: str, msg: str) -> float:
        """``text`` as a Go duration in seconds; ``msg`` is the error if it is not one."""
        try:
            return values.parse_duration(text)
        except ValueError:
            raise self.err(d, msg) from None

    def integer(self, d: Directive, text: str, msg: str) -> int:
        """``text`` as a decimal integer; ``msg`` is the error if it is not one."""
        try:
            return int(text, 10)
        except ValueError:
            raise self.err(d, msg) from None



def err(d: Directive, msg: str) -> ConfigError:
    return ConfigError(msg, d.file, d.line, d.name)


def arg_count_error(d: Directive) -> ConfigError:
    return ConfigError(
        f"Wrong argument count or unexpected line ending after '{d.name}'", d.file, d.line,
        d.name,
    )


def no_block(d: Directive) -> None:
    if d.block:
        raise err(d, f"'{d.name}' takes no block")



def parse_addr(d: Directive, default: str) -> tuple[str, int]:
    """The optional single ``ADDR`` argument of prometheus, health and ready."""
    if len(d.args) > 1:
        raise arg_count_error(d)
    try:
        return values.split_host_port(d.args[0] if d.args else default)
    except ValueError as e:
        raise err(d, str(e)) from None


class HTTPPlugin(SetupPlugin):
    """A setup plugin serving paths on a shared HTTP listener: holds it while running."""

    def __init__(self, srv: http.HTTPServer) -> None:
        self.http = srv
        self.held = False

    @property
    def port(self) -> int:
        """The bound port (useful with ``127.0.0.1:0`` in tests)."""
        return self.http.port

    async def start(self) -> None:
        await self.http.acquire()
        self.held = True

    async def stop(self) -> None:
        if self.held:
            self.held = False
            await self.http.release()
