"""ready: ``GET /ready`` answers 200 ``OK`` once every plugin that reports readiness is ready.

Setup-only. Until then it answers 503 with the sorted, comma-separated names of the plugins
that are not ready yet (``server`` until the DNS listeners are bound); during a graceful stop
(lame duck included) it answers 503 ``Shutting down``. With ``monitor until-ready`` (the
default) a plugin that was ready once is not asked again; ``monitor continuously`` asks
every plugin on every request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from linkdns import http
from linkdns.corefile import Directive
from linkdns.errors import ConfigError
from linkdns.plugin import Env, HTTPPlugin, PluginSpec, parse_addr, register

log = logging.getLogger("linkdns.plugin.ready")

DEFAULT_ADDR = ":8181"
PATH = "/ready"
MONITOR = ("until-ready", "continuously")


@dataclass(frozen=True)
class ReadyConfig:
    host: str = ""
    port: int = 8181
    continuously: bool = False


def parse(d: Directive) -> ReadyConfig:
    host, port = parse_addr(d, DEFAULT_ADDR)
    continuously = False
    for sub in d.block or []:
        if sub.name != "monitor":
            raise ConfigError(f"unknown property '{sub.name}'", sub.file, sub.line, "ready")
        if len(sub.args) != 1:
            raise ConfigError(f"Wrong argument count or unexpected line ending after "
                              f"'{sub.name}'", sub.file, sub.line, "ready")
        if sub.args[0] not in MONITOR:
            raise ConfigError(f"monitor type '{sub.args[0]}' not supported", sub.file,
                              sub.line, "ready")
        continuously = sub.args[0] == "continuously"
    return ReadyConfig(host, port, continuously)


class Ready(HTTPPlugin):
    name = "ready"

    def __init__(self, srv: http.HTTPServer, env: Env, continuously: bool) -> None:
        super().__init__(srv)
        self.env = env
        self.continuously = continuously
        #: plugins seen ready once (not asked again in until-ready mode), by id
        self.confirmed: dict[int, object] = {}
        self.last: list[str] = []

    def not_ready(self) -> list[str]:
        """Sorted names of plugins not ready (``server`` while listeners are not bound)."""
        names: set[str] = set()
        if not self.env.started.is_set():
            names.add("server")
        for p in self.env.plugins():
            if self.confirmed.get(id(p)) is p:
                continue
            if p.ready():
                if not self.continuously:
                    self.confirmed[id(p)] = p
            else:
                names.add(p.name)
        return sorted(names)

    def handle(self, req: http.Request) -> http.Response:
        if self.env.stopping:
            return http.text(503, "Shutting down")
        names = self.not_ready()
        if names != self.last and names:
            log.info("Plugins not ready: %s", ",".join(names))
        self.last = names
        if not names:
            return http.text(200, "OK")
        return http.text(503, ",".join(names))

def build(cfg: ReadyConfig, env: Env) -> Ready:
    srv = env.http(cfg.host, cfg.port)
    r = Ready(srv, env, cfg.continuously)
    srv.route(PATH, r.handle)
    return r


register(PluginSpec("ready", parse, build))
