"""The template handler: match a query against the templates in order, answer from the first.

Query path as CoreDNS's plugin/template/template.go:

* a name outside every template's zones goes to the next plugin;
* each template in turn: outside its zones, or another class or type (ANY matches either
  way): the next template; no regex matches the name: the next template when ``fallthrough``
  covers the name, else NXDOMAIN;
* the first regex that matches (anywhere in the lowercase name, Go's MatchString) makes the
  reply: rcode SERVFAIL answers SERVFAIL at once; otherwise an authoritative reply with the
  configured rcode and the rendered answer, authority and additional records. A record that
  fails to render or parse counts a failure and answers SERVFAIL;
* no template matched: the next plugin.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from linkdns import wire
from linkdns.errors import WireError
from linkdns.plugin import ERROR_RCODES, Handler
from linkdns.plugins.template import metrics
from linkdns.plugins.template.gotmpl import Data, Template, TemplateError
from linkdns.request import Request, class_name, type_name
from linkdns.writer import Writer
from linkdns.zones import zone_match

if TYPE_CHECKING:
    from linkdns.plugin import Env
    from linkdns.plugins.template.setup import TemplateConfig

_HEAD = struct.Struct(">HHHHHH")


@dataclass(frozen=True)
class Rule:
    """One template with its zones resolved."""

    cfg: TemplateConfig
    zones: tuple[str, ...]


class RenderError(Exception):
    def __init__(self, section: str, tmpl: Template, rr: bool, msg: str) -> None:
        super().__init__(msg)
        self.section, self.tmpl, self.rr = section, tmpl, rr


class TemplateHandler(Handler):
    name = "template"

    def __init__(self, rules: list[Rule], env: Env) -> None:
        super().__init__()
        self.rules = rules
        self.zones = tuple(z for r in rules for z in r.zones)
        self.env = env
        self.coll: metrics.TemplateCollector | None = None

    async def start(self) -> None:
        self.coll = metrics.collector(self.env)

    async def serve(self, req: Request, w: Writer) -> int:
        name = req.name
        if not zone_match(name, self.zones):
            return await self.next_serve(req, w)
        for rule in self.rules:
            got = self.match(rule, req)
            if got is None:
                continue
            if isinstance(got, bool):  # no regex matched and no fallthrough
                w.send(wire.error_reply(req.q, req.data, wire.NXDOMAIN))
                return wire.NXDOMAIN
            cfg, d = rule.cfg, got
            labels = (req.server, d.zone, "", d.cls, d.type)
            if self.coll is not None:
                self.coll.matches[labels] += 1
            if cfg.rcode in ERROR_RCODES:
                return cfg.rcode
            try:
                sections = [_render(s, ts, d) for s, ts in (("answer", cfg.answer),
                                                              ("authority", cfg.authority),
                                                              ("additional", cfg.additional))]
            except RenderError as e:
                if self.coll is not None:
                    rows = self.coll.rr_failures if e.rr else self.coll.failures
                    rows[(*labels, e.section, e.tmpl.text)] += 1
                req.meta["error"] = f"template {e.section} {e.tmpl.source!r}: {e}"
                return wire.SERVFAIL
            w.write(reply(req.q, cfg.rcode, sections), "template")
            return cfg.rcode
        return await self.next_serve(req, w)

    @staticmethod
    def match(rule: Rule, req: Request) -> Data | bool | None:
        """Data for the templates when ``rule`` matches; None to try the next template; False
        when the zone, class and type fit but no regex matched and no fallthrough applies."""
        cfg, q, name = rule.cfg, req.q, req.name
        zone = zone_match(name, rule.zones)
        if not zone:
            return None
        if cfg.qclass != wire.T_ANY and q.qclass != wire.T_ANY and q.qclass != cfg.qclass:
            return None
        if cfg.qtype != wire.T_ANY and q.qtype != wire.T_ANY and q.qtype != cfg.qtype:
            return None
        for rx in cfg.regex:
            m = rx.search(name)
            if m is None:
                continue
            return _data(m, rx, req, zone, cfg)
        if cfg.fall is not None and zone_match(name, cfg.fall):
            return None
        return False


def _data(m: re.Match[str], rx: re.Pattern[str], req: Request, zone: str,
          cfg: TemplateConfig) -> Data:
    q = req.q
    match = tuple(g or "" for g in (m.group(0), *m.groups()))
    group = {str(i): s for i, s in enumerate(match)}
    group.update({k: v or "" for k, v in m.groupdict().items()})
    return Data(
        name=req.name, zone=zone,
        cls=class_name(q.qclass if q.qclass != wire.T_ANY else cfg.qclass),
        type=type_name(q.qtype if q.qtype != wire.T_ANY else cfg.qtype),
        remote=str(req.peer[0]) if req.peer else "", match=match, group=group,
    )


def _render(section: str, templates: tuple[Template, ...], d: Data) -> list[bytes]:
    # dnslib (via message) is imported on the first templated answer, not at start-up: a
    # daemon whose Corefile has no template keeps it out of memory (~1 MiB of RSS).
    from linkdns import message

    out = []
    for t in templates:
        try:
            text = t.render(d)
        except TemplateError as e:
            raise RenderError(section, t, False, str(e)) from None
        try:
            out.append(message.rr_from_text(text))
        except WireError as e:
            raise RenderError(section, t, True, str(e)) from None
    return out


def reply(q: wire.Query, rcode: int, sections: list[list[bytes]]) -> bytes:
    """An authoritative reply to ``q`` (CoreDNS's SetReply: opcode, RD and CD copied; no RA)
    with the packed answer, authority and additional records."""
    flags = wire.QR | wire.AA | (q.flags & (wire.OPCODE_MASK | wire.RD | wire.CD)) | rcode
    an, ns, ar = sections
    head = _HEAD.pack(q.id, flags, 1, len(an), len(ns), len(ar))
    return b"".join([head, q.question, *an, *ns, *ar])
