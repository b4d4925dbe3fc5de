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
from linkdns.corefile import Directive
from linkdns.errors import ConfigError
from linkdns.plugin import PluginSpec, SetupPlugin, arg_count_error, err, register

if TYPE_CHECKING:
    from linkdns.plugin import Env

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


async def watch(env: Env, cfg: ReloadConfig) -> None:
    """Compare the Corefile's hash every interval; reload on a change."""
    source = env.source
    assert source is not None
    running = digest(source)
    log.info("Running configuration SHA512 = %s", running)
    while True:
        await asyncio.sleep(cfg.interval + random.uniform(-cfg.jitter, cfg.jitter))
        try:
            now = digest(source)
        except OSError as e:
            log.error("Restart failed: %s: %s", source, e.strerror)
            continue
        if now == running:
            continue
        running = now  # a broken file is reported once, not every interval
        log.info("Reloading")
        try:
            await env.reload()
        except ConfigError as e:
            for one in e.all:
                log.error("Restart failed: %s", one)
            continue
        except Exception as e:
            log.error("Restart failed: %s", e)
            continue
        log.info("Running configuration SHA512 = %s", running)
        if not env.uses("reload"):
            return


class Reload(SetupPlugin):
    name = "reload"

    def __init__(self, cfg: ReloadConfig, env: Env) -> None:
        self.cfg = cfg
        self.env = env

    async def start(self) -> None:
        env = self.env
        if env.source is None:
            log.warning("no Corefile file to watch (configuration given as text)")
            return
        env.background(TASK, lambda: watch(env, self.cfg))


register(PluginSpec("reload", parse, lambda cfg, env: Reload(cfg, env)))
