"""template: Corefile syntax (CoreDNS's plugin/template/setup.go) and building the handler.

    template CLASS TYPE [ZONE...] {
        match REGEX...
        answer RR
        additional RR
        authority RR
        rcode CODE
        fallthrough [ZONE...]
    }

One directive is one template; a block may hold several, tried in the order written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from linkdns import wire
from linkdns.corefile import Directive
from linkdns.plugin import Args, PluginSpec, register
from linkdns.plugins.template.gotmpl import Template, TemplateError
from linkdns.plugins.template.handler import Rule, TemplateHandler
from linkdns.request import class_name, type_name

if TYPE_CHECKING:
    from linkdns.plugin import Env

_A = Args("template")

#: CoreDNS's hard limit on a regex pattern (setup.go maxRegexpLen).
MAX_REGEX_LEN = 10000

_CLASSES = {class_name(c): c for c in (1, 3, 4, 254, 255)}
_TYPES = {n: t for t in range(65536) if not (n := type_name(t)).startswith("TYPE")}
_RCODES = {name: rc for rc, name in wire.RCODE_NAMES.items() if rc < 16}
_UNSUPPORTED = ("ederror", "edns", "var", "expr")


@dataclass(frozen=True)
class TemplateConfig:
    """One ``template`` directive."""

    qclass: int
    qtype: int
    #: zones of the template; None: the server block's zones
    zones: tuple[str, ...] | None
    regex: tuple[re.Pattern[str], ...]
    answer: tuple[Template, ...]
    additional: tuple[Template, ...]
    authority: tuple[Template, ...]
    rcode: int
    #: ``fallthrough`` zones ("." when given without zones); None when absent
    fall: tuple[str, ...] | None








def go_regex(d: Directive, pattern: str) -> re.Pattern[str]:
    """Compile a Go RE2 pattern with Python's re: ``(?<name>`` becomes ``(?P<name>`` and
    ``\\z`` becomes ``\\Z``; the rest is read as Python reads it."""
    if len(pattern) > MAX_REGEX_LEN:
        raise _A.err(d, f"regex pattern too long: {len(pattern)} > {MAX_REGEX_LEN}")
    text = re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", pattern)
    text = re.sub(r"(?<!\\)((?:\\\\)*)\\z", r"\1\\Z", text)
    try:
        return re.compile(text)
    except re.error as e:
        raise _A.err(d, f"could not parse regex: {pattern}, {e}") from None


def _templates(sub: Directive, section: str) -> list[Template]:
    if not sub.args:
        raise _A.argc(sub)
    out = []
    for text in sub.args:
        try:
            out.append(Template(text))
        except TemplateError as e:
            raise _A.err(sub, f"could not compile template: {section}, {e}") from None
    return out


def parse(d: Directive) -> TemplateConfig:
    if len(d.args) < 2:
        raise _A.argc(d)
    qclass = _CLASSES.get(d.args[0])
    if qclass is None:
        raise _A.err(d, f"invalid query class {d.args[0]}")
    qtype = _TYPES.get(d.args[1])
    if qtype is None:
        raise _A.err(d, f"invalid RR class {d.args[1]}")  # CoreDNS's wording
    zones = tuple(_A.zones(d, d.args[2:])) if len(d.args) > 2 else None
    regex: list[re.Pattern[str]] = []
    sections: dict[str, list[Template]] = {"answer": [], "additional": [], "authority": []}
    rcode = wire.NOERROR
    fall: tuple[str, ...] | None = None
    for sub in d.block or []:
        if sub.block is not None:
            raise _A.err(sub, f"'{sub.name}' takes no block")
        if sub.name == "match":
            if not sub.args:
                raise _A.argc(sub)
            regex.extend(go_regex(sub, a) for a in sub.args)
        elif sub.name in sections:
            sections[sub.name].extend(_templates(sub, sub.name))
        elif sub.name == "rcode":
            if len(sub.args) != 1:
                raise _A.argc(sub)
            if sub.args[0] not in _RCODES:
                raise _A.err(sub, f"unknown rcode {sub.args[0]}")
            rcode = _RCODES[sub.args[0]]
        elif sub.name == "fallthrough":
            fall = tuple(_A.zones(sub, sub.args)) if sub.args else (".",)
        elif sub.name == "upstream":
            pass  # CoreDNS: deprecated, arguments ignored
        elif sub.name in _UNSUPPORTED:
            raise _A.err(sub, f"'{sub.name}' is not supported by linkdns's template plugin")
        else:
            raise _A.err(sub, f"unknown property '{sub.name}'")
    if not regex:
        regex.append(re.compile(".*"))
    return TemplateConfig(qclass, qtype, zones, tuple(regex), tuple(sections["answer"]),
                          tuple(sections["additional"]), tuple(sections["authority"]), rcode,
                          fall)


def parse_all(ds: list[Directive]) -> list[TemplateConfig]:
    return [parse(d) for d in ds]


def build(cfgs: list[TemplateConfig], env: Env) -> TemplateHandler:
    rules = [Rule(c, c.zones if c.zones is not None else tuple(env.zones)) for c in cfgs]
    return TemplateHandler(rules, env)


register(PluginSpec("template", parse, build, once=False, parse_all=parse_all))
