"""hosts: Corefile syntax (CoreDNS's plugin/hosts/setup.go) and building the handler.

    hosts [FILE [ZONES...]] {
        [INLINE]
        ttl SECONDS
        no_reverse
        reload DURATION
        fallthrough [ZONES...]
    }

Lines of the block that are not an option are inline hosts(5) entries, as long as no
``fallthrough`` came before them; after it they are errors (``unknown property``).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from linkdns import values
from linkdns.corefile import Directive
from linkdns.plugin import Args, PluginSpec, register
from linkdns.plugins.hosts.handler import Hosts, Options
from linkdns.plugins.hosts.hostsfile import parse_hosts, parse_ip

if TYPE_CHECKING:
    from linkdns.plugin import Env

log = logging.getLogger("linkdns.plugin.hosts")
_A = Args("hosts")

DEFAULT_PATH = "/etc/hosts"
_ATOI = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class HostsConfig:
    path: str = DEFAULT_PATH
    #: zones to answer for; None: the server block's zones
    origins: tuple[str, ...] | None = None
    inline: tuple[str, ...] = ()
    ttl: int = 3600
    reload: float = 5.0
    reverse: bool = True
    #: ``fallthrough`` zones ("." when given without zones); None when absent
    fall: tuple[str, ...] | None = None






def _check_file(d: Directive, path: str) -> None:
    """CoreDNS's set-up check: a missing file or a directory is only a warning."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        log.warning("File does not exist: %s", path)
        return
    except OSError as e:
        raise _A.err(d, f"unable to access hosts file '{path}': {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        log.warning('Hosts file "%s" is a directory', path)


def _ttl(sub: Directive) -> int:
    if not sub.args:
        raise _A.err(sub, "ttl needs a time in second")
    if not _ATOI.fullmatch(sub.args[0]):
        raise _A.err(sub, "ttl needs a number of second")
    ttl = int(sub.args[0])
    if ttl <= 0 or ttl > 65535:
        raise _A.err(sub, "ttl provided is invalid")
    return ttl


def _reload(sub: Directive) -> float:
    if len(sub.args) != 1:
        raise _A.err(sub, "reload needs a duration (zero seconds to disable)")
    text = sub.args[0]
    try:
        secs = values.parse_duration(text.removeprefix("-"))
    except ValueError:
        raise _A.err(sub, f"invalid duration for reload '{text}'") from None
    if text.startswith("-") and secs > 0:
        raise _A.err(sub, f"invalid negative duration for reload '{text}'")
    return secs


def parse(d: Directive) -> HostsConfig:
    args = list(d.args)
    path = DEFAULT_PATH
    if args:
        path = args.pop(0)
        if not os.path.isabs(path):  # CoreDNS joins the *root* folder; here the Corefile's
            path = os.path.join(os.path.dirname(os.path.abspath(d.file)), path)
        _check_file(d, path)
    origins = tuple(_A.zones(d, args)) if args else None
    ttl, reload, reverse = 3600, 5.0, True
    fall: tuple[str, ...] | None = None
    inline: list[str] = []
    for sub in d.block or []:
        if sub.block is not None:
            raise _A.err(sub, f"'{sub.name}' takes no block")
        if sub.name == "fallthrough":
            fall = tuple(_A.zones(sub, sub.args)) if sub.args else (".",)
        elif sub.name == "no_reverse":
            if sub.args:
                raise _A.err(sub, "Wrong argument count or unexpected line ending after "
                                "'no_reverse'")
            reverse = False
        elif sub.name == "ttl":
            ttl = _ttl(sub)
        elif sub.name == "reload":
            reload = _reload(sub)
        elif fall is None:
            if not sub.args or parse_ip(sub.name) is None:
                log.warning("%s:%d - ignoring '%s': not an inline hosts entry (ADDRESS NAME...)",
                            sub.file, sub.line, " ".join([sub.name, *sub.args]))
            inline.append(" ".join([sub.name, *sub.args]))
        else:
            raise _A.err(sub, f"unknown property '{sub.name}'")
    return HostsConfig(path, origins, tuple(inline), ttl, reload, reverse, fall)


def build(cfg: HostsConfig, env: Env) -> Hosts:
    origins = cfg.origins if cfg.origins is not None else tuple(env.zones)
    inline = parse_hosts("\n".join(cfg.inline), origins, cfg.reverse)
    opts = Options(cfg.path, origins, inline, cfg.ttl, cfg.reload, cfg.reverse, cfg.fall)
    return Hosts(opts, env)


register(PluginSpec("hosts", parse, build))
