"""reload: watch the Corefile and swap in a changed configuration without a restart.

As CoreDNS's reload: every INTERVAL (plus or minus JITTER) the Corefile's SHA512 is compared
with the running one; on a change the new file is parsed and every plugin set up, and only
then swapped in (Server.reload: listeners that stay stay open, queries in flight finish on the
old chains). A new file with errors is logged (``Restart failed: FILE:LINE - ...``) and the
running configuration keeps serving. One watcher runs per server, whichever blocks name
*reload*; it ends when a reloaded configuration no longer names it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from linkdns import values
from linkdns.config import build_sites
from linkdns.corefile import Directive, load_corefile
from linkdns.errors import ConfigError
from linkdns.plugin import PluginSpec, SetupPlugin, arg_count_error, err, register

if TYPE_CHECKING:
    from linkdns.server.core import Server
    from linkdns.server.site import Site

log = logging.getLogger("linkdns.plugin.reload")

TASK = "reload"


@dataclass(frozen=True)
class ReloadConfig:
    interval: float = 30.0
    jitter: float = 15.0


def parse(d: Directive) -> ReloadConfig:
    if len(d.args) > 2 or d.block:
        raise arg_count_error(d)
    try:
        interval = values.parse_duration(d.args[0]) if d.args else 30.0
        jitter = values.parse_duration(d.args[1]) if len(d.args) > 1 else 15.0
    except ValueError as e:
        raise err(d, str(e)) from None
    if interval < 2:
        raise err(d, "interval value must be greater or equal to 2s")
    if jitter < 1:
        raise err(d, "jitter value must be greater or equal to 1s")
    if jitter > interval / 2:
        raise err(d, "jitter should not be greater than half of interval")
    return ReloadConfig(interval, jitter)


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha512(f.read()).hexdigest()


async def watch(server: Server, cfg: ReloadConfig) -> None:
    """Compare the Corefile's hash every interval; reload on a change."""
    assert server.source is not None
    running = digest(server.source)
    log.info("Running configuration SHA512 = %s", running)
    while True:
        await asyncio.sleep(cfg.interval + random.uniform(-cfg.jitter, cfg.jitter))
        try:
            now = digest(server.source)
        except OSError as e:
            log.error("Restart failed: %s: %s", server.source, e.strerror)
            continue
        if now == running:
            continue
        running = now  # a broken file is reported once, not every interval
        log.info("Reloading")
        try:
            cfgs = build_sites(load_corefile(server.source), server.dns_port)
            await server.reload(cfgs)
        except ConfigError as e:
            for one in e.all:
                log.error("Restart failed: %s", one)
            continue
        except Exception as e:
            log.error("Restart failed: %s", e)
            continue
        log.info("Running configuration SHA512 = %s", running)
        if not any("reload" in s.cfg.plugins for s in server.sites):
            return


class Reload(SetupPlugin):
    name = "reload"

    def __init__(self, cfg: ReloadConfig, site: Site) -> None:
        self.cfg = cfg
        self.server = site.server

    async def start(self) -> None:
        server = self.server
        if server.source is None:
            log.warning("no Corefile file to watch (configuration given as text)")
            return
        t = server.background.get(TASK)
        if t is None or t.done():
            server.background[TASK] = asyncio.get_running_loop().create_task(
                watch(server, self.cfg))


register(PluginSpec("reload", parse, lambda cfg, site: Reload(cfg, site)))
