"""Corefile lexer: text -> tokens with file, line and "first on its line" flags.

Follows the Caddy v1 lexer that CoreDNS uses (coredns/caddy caddyfile/lexer.go): tokens are split
on whitespace, ``"..."`` quotes a token (it may span lines; only ``\\"`` is an escape, any other
backslash is kept), a leading byte order mark is dropped. ``#`` starts a comment only at the
start of a token (Caddy v2 rule; Caddy v1 also cut tokens at a mid-token ``#``).

Environment references ``{$VAR}`` and ``{%VAR%}`` are replaced inside each token, as CoreDNS does
per token (so a value never splits into several tokens nor becomes a brace).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from linkdns.errors import ConfigError

__all__ = ["Token", "substitute_env", "tokenize"]

# Windows form first, then Unix form, in one left-to-right pass (values are not re-expanded).
_ENV_RE = re.compile(r"\{%([\s\S]+?)%\}|\{\$([^}]+)\}")


@dataclass(frozen=True, slots=True)
class Token:
    """One lexed word.

    ``raw`` is the text as written (without quotes), ``text`` the text after substitutions.
    ``newline`` is true when the token is the first one on its line; ``chain`` names the imports
    (``snippet:NAME`` / ``file:PATH``) that produced it, for cycle detection.
    """

    text: str
    raw: str
    file: str
    line: int
    newline: bool
    quoted: bool = False
    chain: tuple[str, ...] = ()

    @property
    def is_open(self) -> bool:
        """A structural ``{`` (standalone and unquoted)."""
        return not self.quoted and self.raw == "{"

    @property
    def is_close(self) -> bool:
        """A structural ``}`` (standalone and unquoted)."""
        return not self.quoted and self.raw == "}"

    @property
    def is_brace(self) -> bool:
        return self.is_open or self.is_close

    @property
    def is_import(self) -> bool:
        return not self.quoted and self.raw == "import"


def substitute_env(s: str, env: Mapping[str, str]) -> str:
    """Replace ``{$VAR}`` and ``{%VAR%}`` in ``s``; unset variables become empty strings."""
    if "{" not in s:
        return s

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) if m.group(1) is not None else m.group(2)
        return env.get(name, "")

    return _ENV_RE.sub(repl, s)


def tokenize(
    text: str, filename: str, env: Mapping[str, str], chain: tuple[str, ...] = ()
) -> list[Token]:
    """Split ``text`` into tokens; raises ConfigError on an unterminated quote."""
    if text.startswith("\ufeff"):
        text = text[1:]
    tokens: list[Token] = []
    n = len(text)
    i = 0
    line = 1
    last_line = 0  # line on which the previous token ended
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
            continue
        if ch.isspace():
            i += 1
            continue
        if ch == "#":
            end = text.find("\n", i)
            i = n if end == -1 else end
            continue
        start = line
        if ch == '"':
            raw, i, line = _quoted(text, i + 1, line, filename)
            quoted = True
        else:
            j = i
            while j < n and not text[j].isspace():
                j += 1
            raw, i, quoted = text[i:j], j, False
        tokens.append(
            Token(
                text=substitute_env(raw, env),
                raw=raw,
                file=filename,
                line=start,
                newline=start > last_line,
                quoted=quoted,
                chain=chain,
            )
        )
        last_line = line
    return tokens


def _quoted(text: str, i: int, line: int, filename: str) -> tuple[str, int, int]:
    """Read a quoted token whose body starts at ``i``; return (value, next index, line)."""
    start = line
    buf: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return "".join(buf), i + 1, line
        if c == "\\" and i + 1 < n:
            nxt = text[i + 1]
            buf.append('"' if nxt == '"' else "\\" + nxt)
            line += nxt == "\n"
            i += 2
            continue
        line += c == "\n"
        buf.append(c)
        i += 1
    raise ConfigError("unterminated quoted string", filename, start)
