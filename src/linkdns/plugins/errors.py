"""errors: log every error a plugin reports, optionally consolidated by pattern."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field

from linkdns import plugin, values
from linkdns.corefile import Directive
from linkdns.errors import ConfigError
from linkdns.plugin import Handler, PluginSpec, register
from linkdns.request import Request
from linkdns.writer import Writer

log = logging.getLogger("linkdns.plugin.errors")

LEVELS = {"warning": logging.WARNING, "error": logging.ERROR, "info": logging.INFO,
          "debug": logging.DEBUG}


@dataclass
class Consolidate:
    period: float
    pattern: re.Pattern[str]
    level: int = logging.ERROR
    count: int = 0


@dataclass
class ErrorsConfig:
    consolidate: list[Consolidate] = field(default_factory=list)
    stacktrace: bool = False


def parse(d: Directive) -> ErrorsConfig:
    if d.args:
        raise plugin.arg_count_error(d)
    cfg = ErrorsConfig()
    for sub in d.block or []:
        if sub.name == "stacktrace" and not sub.args:
            cfg.stacktrace = True
        elif sub.name == "consolidate" and len(sub.args) in (2, 3):
            try:
                period = values.parse_duration(sub.args[0])
                pat = re.compile(sub.args[1])
            except (ValueError, re.error) as e:
                raise ConfigError(str(e), sub.file, sub.line, "errors") from None
            level = logging.ERROR
            if len(sub.args) == 3:
                if sub.args[2] not in LEVELS:
                    raise ConfigError(f"unknown log level {sub.args[2]!r}", sub.file, sub.line,
                                      "errors")
                level = LEVELS[sub.args[2]]
            cfg.consolidate.append(Consolidate(period, pat, level))
        else:
            raise ConfigError(f"unknown property '{sub.name}'", sub.file, sub.line, "errors")
    return cfg


class Errors(Handler):
    name = "errors"
    hit_transparent = True  # a cache hit is never an error

    def __init__(self, cfg: ErrorsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._timers: list[asyncio.Task[None]] = []

    async def serve(self, req: Request, w: Writer) -> int:
        rc = await self.next_serve(req, w)
        msg = req.meta.get("error")
        if msg:
            self.report(rc, req, str(msg))
        return rc

    def report(self, rc: int, req: Request, msg: str) -> None:
        for c in self.cfg.consolidate:
            if c.pattern.search(msg):
                c.count += 1
                return
        log.error("%d %s %s: %s", rc, req.name, req.type_name, msg)

    async def start(self) -> None:
        for c in self.cfg.consolidate:
            self._timers.append(asyncio.get_running_loop().create_task(self._flush(c)))

    async def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)

    async def _flush(self, c: Consolidate) -> None:
        while True:
            await asyncio.sleep(c.period)
            if c.count:
                n, c.count = c.count, 0
                log.log(c.level, "%d errors like '%s' occurred in last %s", n,
                        c.pattern.pattern, _fmt(c.period))


def _fmt(secs: float) -> str:
    """Go's time.Duration text (``500ms``, ``30s``, ``5m0s``, ``1h0m0s``)."""
    if secs < 1:
        return f"{secs * 1000:g}ms"
    if secs < 60:
        return f"{secs:g}s"
    s = int(secs)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60}m{s % 60}s"
    return f"{s // 60}m{s % 60}s"


register(PluginSpec("errors", parse, lambda cfg, env: Errors(cfg)))
