"""The plugin contract, the registry and the one table that fixes the execution order.

Contract (CoreDNS's): ``async def serve(req, w) -> rcode``. If the returned rcode is SERVFAIL,
REFUSED, FORMERR or NOTIMP nothing was written and the server writes the error reply; any
other rcode means the plugin already wrote the reply through ``w``.

Each plugin registers a :class:`PluginSpec`: a pure ``parse(directive) -> config`` (testable
without a server, raising ConfigError with file:line) and a ``build(config, site)`` that makes
the runtime object. Setup-only plugins (bind, health, ready, reload, prometheus) return an
object that is not a handler: it only hooks start-up and shut-down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from linkdns import wire
from linkdns.errors import ConfigError

if TYPE_CHECKING:
    from linkdns.corefile import Directive
    from linkdns.request import Request
    from linkdns.server.site import Site
    from linkdns.writer import Writer

# CoreDNS plugin.cfg order (the subset linkdns knows); earlier = runs first.
ORDER: tuple[str, ...] = (
    "reload", "bufsize", "bind", "ready", "health", "prometheus", "errors", "log", "acl",
    "loadbalance", "cache", "template", "hosts", "loop", "forward",
)

# Rcodes that mean "nothing written, the server must answer".
ERROR_RCODES = frozenset({wire.SERVFAIL, wire.REFUSED, wire.FORMERR, wire.NOTIMP})

#: Returned by a handler that answers nothing on purpose (acl's ``drop``): the server sends no
#: reply and counts no response. Not a wire rcode; to the handlers before it, it reads as
#: "written" (``client_wrote`` is true), as CoreDNS's ``return dns.RcodeSuccess`` does.
DROP = -1


def client_wrote(rc: int) -> bool:
    """True when a handler that returned ``rc`` already wrote its reply."""
    return rc not in ERROR_RCODES



def zone_match(name: str, zones: Iterable[str]) -> str:
    """The longest of ``zones`` (lowercase FQDNs) that ``name`` is at or below, "" if none
    (CoreDNS's plugin.Zones.Matches)."""
    best = ""
    for z in zones:
        if (z == "." or name == z or name.endswith("." + z)) and len(z) > len(best):
            best = z
    return best


def in_zones(name: str, zones: Iterable[str]) -> bool:
    """True when ``name`` is one of ``zones`` or below one of them."""
    return any(z == "." or name == z or name.endswith("." + z) for z in zones)

class Handler:
    """A plugin in the query chain."""

    name: ClassVar[str] = ""
    #: True when the plugin has no effect on a cache hit, so the hit path may skip it.
    hit_transparent: ClassVar[bool] = False

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

    # Hit-path hooks (see server/site.py): adjust the client's size, rewrite a hit reply.
    def hit_size(self, size: int) -> int:
        return size

    def hit_rewrite(self, reply: bytearray) -> None:
        return None


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


@dataclass(frozen=True)
class PluginSpec:
    name: str
    parse: Callable[[Directive], Any]
    build: Callable[[Any, Site], Built]
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

