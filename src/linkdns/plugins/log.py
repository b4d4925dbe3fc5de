"""log: one line per query in CoreDNS's Common Log Format (or a custom format)."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

from linkdns import wire
from linkdns.corefile import Directive
from linkdns.errors import ConfigError
from linkdns.plugin import DROPPED, Handler, PluginSpec, client_wrote, err, register
from linkdns.request import Request, class_name
from linkdns.writer import WrapWriter, Writer
from linkdns.zones import in_zones

log = logging.getLogger("linkdns.plugin.log")

COMMON = ('{remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} {>bufsize}" '
          "{rcode} {>rflags} {rsize} {duration}")
COMBINED = COMMON + ' "{>opcode}"'
CLASSES = {"all", "denial", "error", "success"}
_PLACEHOLDER = re.compile(r"\{[>]?[a-z]+\}")


@dataclass
class LogConfig:
    names: list[str] = field(default_factory=lambda: ["."])
    fmt: str = COMMON
    classes: set[str] = field(default_factory=lambda: {"all"})


def parse(d: Directive) -> LogConfig:
    cfg = LogConfig()
    args = list(d.args)
    fmt_args = [a for a in args if "{" in a]
    names = [a for a in args if "{" not in a]
    if len(fmt_args) > 1:
        raise err(d, "at most one format")
    if fmt_args:
        f = fmt_args[0]
        cfg.fmt = COMMON if f == "{common}" else COMBINED if f == "{combined}" else f
    if names:
        cfg.names = [n.lower().rstrip(".") + "." if n != "." else "." for n in names]
    for sub in d.block or []:
        if sub.name != "class" or not sub.args:
            raise ConfigError(f"unknown property '{sub.name}'", sub.file, sub.line, "log")
        for c in sub.args:
            if c not in CLASSES:
                raise ConfigError(f"unknown class {c!r}", sub.file, sub.line, "log")
        cfg.classes = set(sub.args)
    return cfg


def response_flags(f: int) -> str:
    names = [("qr", wire.QR), ("aa", wire.AA), ("tc", wire.TC), ("rd", wire.RD),
             ("ra", wire.RA), ("z", 0x0040), ("ad", wire.AD), ("cd", wire.CD)]
    return ",".join(n for n, bit in names if f & bit)


def classify(reply: bytes) -> str:
    """success / denial / error, as the log plugin's class filter sees a reply."""
    if len(reply) < 12:
        return "error"
    rc = reply[3] & 0xF
    if rc == wire.NXDOMAIN:
        return "denial"
    if rc != wire.NOERROR:
        return "error"
    if reply[6:8] == b"\x00\x00":
        return "denial"
    return "success"


class Log(Handler):
    name = "log"

    def __init__(self, cfg: LogConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def _wanted(self, name: str) -> bool:
        return in_zones(name, self.cfg.names)

    async def serve(self, req: Request, w: Writer) -> int:
        if not self._wanted(req.name):
            return await self.next_serve(req, w)
        seen: list[bytes] = []
        rw = WrapWriter(w, seen.append)
        rc = await self.next_serve(req, rw)
        if not client_wrote(rc):
            # As CoreDNS's log does: answer the error here so the line shows what was sent.
            rw.send(wire.error_reply(req.q, req.data, rc))
        reply = seen[-1] if seen else b""
        kind = classify(reply) if reply else "error"
        if "all" in self.cfg.classes or kind in self.cfg.classes:
            log.info("%s", self.format(req, rc, rw if seen else None))
        return rc

    def format(self, req: Request, rc: int, w: Writer | None) -> str:
        q = req.q
        if w is None and rc == DROPPED:
            rcode = "-"  # dropped on purpose (acl): CoreDNS logs no rcode either
        else:
            rcode = wire.RCODE_NAMES.get(w.rcode if w else rc, str(rc)) if (w or rc) else "NOERROR"
        dur = time.perf_counter() - req.start
        host = str(req.peer[0])
        vals = {
            "{remote}": f"[{host}]" if ":" in host else host,
            "{port}": str(req.peer[1]),
            "{>id}": str(q.id),
            "{type}": req.type_name,
            "{class}": class_name(q.qclass),
            "{name}": req.name,
            "{proto}": req.proto,
            "{size}": str(len(q.data)),
            "{>do}": "true" if q.do else "false",
            "{>bufsize}": str(q.udp_size),
            "{rcode}": rcode,
            "{>rflags}": "-",
            "{rsize}": str(w.size if w else 0),
            "{duration}": f"{dur:.6f}".rstrip("0").rstrip(".") + "s",
            "{>opcode}": str((q.flags >> 11) & 0xF),
        }
        if w is not None:
            vals["{>rflags}"] = response_flags(w.flags)
        return _PLACEHOLDER.sub(lambda m: vals.get(m.group(0), "-"), self.cfg.fmt)


register(PluginSpec("log", parse, lambda cfg, env: Log(cfg)))
