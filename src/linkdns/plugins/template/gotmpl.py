"""The Go text/template subset the template plugin renders: no evaluation, a fixed set of forms.

Accepted actions (spaces inside ``{{ }}`` are free, as in Go)::

    {{ .Name }}  {{ .Zone }}  {{ .Class }}  {{ .Type }}  {{ .Remote }}
    {{ index .Match N }}
    {{ .Group.NAME }}  {{ index .Group "NAME" }}

Anything else (pipelines, functions, variables, ``if``/``range``, comments, trim markers
``{{-``) is refused when the Corefile is read. Rendering follows Go's results: ``index .Match N``
past the end is an execution error; ``.Group.NAME`` for a group that does not exist prints
``<no value>`` and ``index .Group "NAME"`` prints nothing (Go's missing map key, either way).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FIELDS = ("Name", "Zone", "Class", "Type", "Remote")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_FORMS = (
    ("field", re.compile(rf"\.({'|'.join(_FIELDS)})")),
    ("group", re.compile(rf"\.Group\.({_IDENT})")),
    ("match", re.compile(r"index\s+\.Match\s+([0-9]+)")),
    ("index", re.compile(r'index\s+\.Group\s+(?:"([^"\\]*)"|`([^`]*)`)')),
)


class TemplateError(Exception):
    """A template that is not in the supported subset, or one that failed to render."""


@dataclass(frozen=True)
class Data:
    """What a template can refer to (CoreDNS's templateData, the parts linkdns keeps)."""

    name: str
    zone: str
    cls: str
    type: str
    remote: str
    match: tuple[str, ...]
    group: dict[str, str]


# A compiled part: a literal, or (kind, argument) for an action.
_Part = str | tuple[str, str]


class Template:
    """A compiled template; ``text`` is Go's canonical form (the metrics' ``template`` label)."""

    __slots__ = ("parts", "source", "text")

    def __init__(self, source: str) -> None:
        self.source = source
        self.parts: list[_Part] = []
        canon: list[str] = []
        pos = 0
        while True:
            start = source.find("{{", pos)
            lit = source[pos:] if start < 0 else source[pos:start]
            if lit:
                self.parts.append(lit)
                canon.append(lit)
            if start < 0:
                break
            end = source.find("}}", start + 2)
            if end < 0:
                raise TemplateError(f"unclosed action in {source!r}")
            action = source[start + 2 : end].strip()
            part = _compile(action)
            self.parts.append(part)
            canon.append("{{" + _canonical(part) + "}}")
            pos = end + 2
        self.text = "".join(canon)

    def render(self, d: Data) -> str:
        out: list[str] = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
                continue
            kind, arg = p
            if kind == "field":
                out.append({"Name": d.name, "Zone": d.zone, "Class": d.cls, "Type": d.type,
                            "Remote": d.remote}[arg])
            elif kind == "group":
                out.append(d.group.get(arg, "<no value>"))
            elif kind == "index":
                out.append(d.group.get(arg, ""))
            else:
                n = int(arg)
                if n >= len(d.match):
                    raise TemplateError(f"error calling index: index out of range: {n}")
                out.append(d.match[n])
        return "".join(out)


def _compile(action: str) -> tuple[str, str]:
    for kind, rx in _FORMS:
        m = rx.fullmatch(action)
        if m is not None:
            arg = next(g for g in m.groups() if g is not None)
            return kind, arg
    raise TemplateError(
        f"unsupported template action {{{{{action}}}}}: linkdns renders only .Name, .Zone, "
        ".Class, .Type, .Remote, .Group.NAME, index .Match N and index .Group \"NAME\""
    )


def _canonical(part: tuple[str, str]) -> str:
    kind, arg = part
    if kind == "field":
        return "." + arg
    if kind == "group":
        return ".Group." + arg
    if kind == "index":
        return f'index .Group "{arg}"'
    return f"index .Match {int(arg)}"
