"""Corefile parser: tokens -> server blocks holding trees of directives.

Semantics follow the Caddy v1 parser that CoreDNS uses (coredns/caddy caddyfile/parse.go):
keys up to ``{`` or end of line (a trailing comma continues on the next line), ``(name) { }``
snippets, ``import`` of snippets or files/globs spliced in as tokens, one block without braces
allowed when it is the only server block. Directive names are not checked here.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from linkdns.corefile.keys import ServerKey, parse_server_key
from linkdns.corefile.lexer import Token, tokenize
from linkdns.errors import ConfigError

__all__ = ["Directive", "ServerBlock", "ServerKey", "load_corefile", "parse_corefile"]

log = logging.getLogger(__name__)

MAX_IMPORTS = 1000  # per kind (snippet, file), like CoreDNS's maxSnippetExpansions
MAX_DEPTH = 100  # nesting of { } blocks
_ARGS_RE = re.compile(r"\{args(?:\[(\d+)\]|\.(\d+))\}")


@dataclass
class Directive:
    """One line of a block: ``name args... [{ sub-directives }]``."""

    name: str
    args: list[str]
    file: str
    line: int
    block: list[Directive] | None = None  # None: no { } followed; a list (maybe empty) otherwise


@dataclass
class ServerBlock:
    """``KEYS { directives }``; a CIDR key contributes one ServerKey per reverse zone."""

    keys: list[ServerKey]
    directives: list[Directive]
    file: str
    line: int  # line of the first key


def parse_corefile(
    text: str,
    filename: str = "Corefile",
    env: Mapping[str, str] | None = None,
    base_dir: str | None = None,
) -> list[ServerBlock]:
    """Parse Corefile ``text``; relative imports resolve against ``base_dir`` (default: the
    folder of ``filename``). ``env`` defaults to ``os.environ``. Raises ConfigError."""
    environ: Mapping[str, str] = os.environ if env is None else env
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(filename))
    root = "file:" + os.path.realpath(os.path.join(base_dir, filename))
    tokens = tokenize(text, filename, environ, (root,))
    return _Parser(tokens, environ, {filename: base_dir}).parse_all()


def load_corefile(path: str, env: Mapping[str, str] | None = None) -> list[ServerBlock]:
    """Read and parse the Corefile at ``path``; imports resolve against its folder."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read Corefile: {e}", path, 0)
    return parse_corefile(text, path, env, os.path.dirname(os.path.abspath(path)))


def _err(msg: str, tok: Token) -> ConfigError:
    return ConfigError(msg, tok.file, tok.line)


def _is_snippet_name(text: str) -> bool:
    return len(text) >= 2 and text[0] == "(" and text[-1] == ")"


def _looks_like_key(name: str) -> bool:
    """Plugin names never hold these; a directive named so is a misplaced server key."""
    return any(c in name for c in ".:/") or _is_snippet_name(name)


class _Parser:
    """Recursive descent over a token list; imports splice tokens in place, like Caddy."""

    def __init__(self, tokens: list[Token], env: Mapping[str, str], dirs: dict[str, str]) -> None:
        self.toks = tokens
        self.pos = 0
        self.env = env
        self.dirs = dirs  # token file -> folder that its relative imports resolve against
        self.snippets: dict[str, list[Token]] = {}
        self.expansions = {"snippet": 0, "file": 0}
        self.blocks: list[ServerBlock] = []

    def peek(self) -> Token | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self) -> Token:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def parse_all(self) -> list[ServerBlock]:
        while self.peek() is not None:
            self._entry()
        return self.blocks

    def _entry(self) -> None:
        """Parse one top-level item: a snippet definition or a server block."""
        keys = self._keys()
        if not keys:
            return
        first = keys[0]
        if len(keys) == 1 and _is_snippet_name(first.text):
            self._snippet(first)
            return
        for k in keys:
            if _is_snippet_name(k.text):
                raise _err(f"snippet {k.text} must be defined alone, not among server keys", k)
        server_keys = [sk for k in keys for sk in parse_server_key(k.text, k.file, k.line)]
        block = ServerBlock(server_keys, [], first.file, first.line)
        nxt = self.peek()
        if nxt is not None and nxt.is_open:
            self.take()
            block.directives = self._directives(nxt, 1)
        else:
            if self.blocks:
                raise _err(
                    "server block without braces: that is only allowed when it is the only"
                    " server block in the file; add { } around its directives",
                    first,
                )
            block.directives = self._directives(None, 1)
            for d in block.directives:
                if d.block is not None and _looks_like_key(d.name):
                    raise ConfigError(
                        f"{d.name!r} starts another server block, but the block on line"
                        f" {block.line} has no braces; add {{ }} around its directives",
                        d.file,
                        d.line,
                    )
        self.blocks.append(block)

    def _keys(self) -> list[Token]:
        """Key tokens (one per key, commas split off) up to ``{`` or the end of the line."""
        keys: list[Token] = []
        expecting = False  # a trailing comma asks for another key, maybe on the next line
        last: Token | None = None
        while True:
            tok = self.peek()
            if tok is None:
                if expecting and last is not None:
                    raise _err("Unexpected EOF: expected another server key after ','", last)
                return keys
            if last is not None and not expecting and tok.newline:
                return keys
            if tok.is_import and (last is None or tok.newline):
                self._import()
                continue
            if tok.is_open:
                if expecting:
                    raise _err(
                        "expected another server key but had '{' - check for extra comma", tok
                    )
                if not keys:
                    raise _err("empty server key: expected server key(s) before '{'", tok)
                return keys
            if tok.is_close:
                raise _err("Unexpected '}' because no matching opening brace", tok)
            last = self.take()
            if not tok.quoted and len(tok.raw) > 1 and tok.raw.endswith("{"):
                raise _err(
                    f"server key {tok.raw!r} cannot end with '{{' - put a space before the brace",
                    tok,
                )
            expecting = self._split_keys(tok, keys, expecting)

    @staticmethod
    def _split_keys(tok: Token, keys: list[Token], expecting: bool) -> bool:
        """Append the comma-separated keys of ``tok``; return whether a comma ends it."""
        pieces = tok.text.split(",")
        lead, trail = pieces[0] == "", len(pieces) > 1 and pieces[-1] == ""
        inner = pieces[1 if lead else 0 : -1 if trail else None]
        if tok.text == ",":
            inner, lead = [], True
        if (lead and (not keys or expecting)) or (not inner and tok.text != ",") or "" in inner:
            raise _err(f"empty server key in {tok.raw!r}", tok)
        keys.extend(replace(tok, text=piece) for piece in inner)
        return trail or tok.text == ","

    def _snippet(self, name_tok: Token) -> None:
        """Store the raw tokens of ``(name) { ... }`` for later imports."""
        name = name_tok.text[1:-1]
        if not name:
            raise _err("empty snippet name", name_tok)
        if name in self.snippets:
            raise _err(f"redeclaration of previously declared snippet {name}", name_tok)
        opener = self.peek()
        if opener is None or not opener.is_open:
            raise _err(f"snippet ({name}) must be followed by '{{'", name_tok)
        self.take()
        body: list[Token] = []
        depth = 1
        while True:
            tok = self.peek()
            if tok is None:
                raise _err("Unexpected EOF: this '{' is never closed", opener)
            self.take()
            depth += tok.is_open - tok.is_close
            if depth == 0:
                break
            body.append(tok)
        self.snippets[name] = body

    def _directives(self, opener: Token | None, depth: int) -> list[Directive]:
        """Directives up to the ``}`` matching ``opener`` (or to EOF when ``opener`` is None)."""
        if depth > MAX_DEPTH and opener is not None:
            raise _err(f"blocks nested deeper than {MAX_DEPTH} levels", opener)
        out: list[Directive] = []
        while True:
            tok = self.peek()
            if tok is None:
                if opener is None:
                    return out
                raise _err("Unexpected EOF: this '{' is never closed", opener)
            if tok.is_close:
                if opener is None:
                    raise _err("Unexpected '}' because no matching opening brace", tok)
                self.take()
                nxt = self.peek()
                if depth > 1 and nxt is not None and not nxt.newline and not nxt.is_close:
                    raise _err(f"unexpected {nxt.text!r} after '}}' - start a new line", nxt)
                return out
            if tok.is_open:
                raise _err("unexpected '{' - a block opens on the line of its directive", tok)
            if tok.is_import:
                self._import()
                continue
            self.take()
            d = Directive(tok.text, [], tok.file, tok.line)
            while (arg := self.peek()) is not None and not arg.newline and not arg.is_close:
                self.take()
                if arg.is_open:
                    d.block = self._directives(arg, depth + 1)
                    break
                d.args.append(arg.text)
            out.append(d)

    # -- imports -------------------------------------------------------------------------------

    def _import(self) -> None:
        """Replace ``import NAME [args...]`` (the rest of its line) by the imported tokens."""
        start = self.pos
        imp = self.take()
        args: list[Token] = []
        while (t := self.peek()) is not None and not t.newline and not t.is_brace:
            args.append(self.take())
        if not args:
            raise _err("import needs a snippet name or a file pattern", imp)
        name, params = args[0].text, [a.text for a in args[1:]]
        if not name:
            raise _err("import requires a non-empty snippet name or file path", imp)
        new: list[Token] = []
        if name in self.snippets:
            chain = self._enter("snippet", name, imp)
            new = self._instantiate(self.snippets[name], chain, imp, params)
        else:
            for path in self._glob(name, imp):
                chain = self._enter("file", os.path.realpath(path), imp)
                new += self._instantiate(self._read(path, imp), chain, imp, params)
        self.toks[start : self.pos] = new
        self.pos = start

    def _enter(self, kind: str, what: str, imp: Token) -> tuple[str, ...]:
        """Count one ``kind`` import of ``what`` under ``imp``; return the new import chain."""
        self.expansions[kind] += 1
        if self.expansions[kind] > MAX_IMPORTS:
            raise _err(f"maximum {kind} import depth ({MAX_IMPORTS}) exceeded", imp)
        ident = f"{kind}:{what}"
        chain = (*imp.chain, ident)
        if ident in imp.chain:
            shown = " -> ".join(
                c[5:] if c.startswith("file:") else c.replace(":", " ", 1) for c in chain
            )
            raise _err(f"import cycle: {shown}", imp)
        return chain

    def _instantiate(
        self, tokens: list[Token], chain: tuple[str, ...], imp: Token, params: list[str]
    ) -> list[Token]:
        """Copy ``tokens`` under import ``chain``, filling ``{args[N]}`` placeholders."""

        def arg(m: re.Match[str]) -> str:
            i = int(m.group(1) or m.group(2))
            if i >= len(params):
                raise _err(f"{m.group(0)} used but import gave {len(params)} argument(s)", imp)
            return params[i]

        return [
            replace(
                t,
                text=_ARGS_RE.sub(arg, t.text) if "{args" in t.text else t.text,
                newline=t.newline or i == 0,
                chain=chain,
            )
            for i, t in enumerate(tokens)
        ]

    def _glob(self, pattern: str, imp: Token) -> list[str]:
        """Files matching ``pattern`` (relative to the importing file's folder), sorted."""
        base = self.dirs.get(imp.file) or os.path.dirname(os.path.abspath(imp.file))
        if pattern.count("*") > 1 or pattern.count("?") > 1 or ("[" in pattern and "]" in pattern):
            raise _err(f"glob pattern may only contain one wildcard (*): {pattern}", imp)
        magic = any(c in pattern for c in "*?[")
        try:
            if magic:
                full = (
                    pattern if os.path.isabs(pattern) else os.path.join(glob.escape(base), pattern)
                )
                return sorted(glob.glob(full, include_hidden=True)) or self._no_match(pattern)
            path = os.path.join(base, pattern)
            if os.path.exists(path):
                return [path]
        except (OSError, ValueError) as e:
            raise _err(f"cannot use import pattern {pattern}: {e}", imp)
        raise _err(f"unknown snippet or missing file to import: {pattern!r}", imp)

    @staticmethod
    def _no_match(pattern: str) -> list[str]:
        log.warning("No files matching import glob pattern: %s", pattern)
        return []

    def _read(self, path: str, imp: Token) -> list[Token]:
        if os.path.isdir(path):
            raise _err(f"could not import {path}: is a directory", imp)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise _err(f"could not import {path}: {e}", imp)
        abspath = os.path.abspath(path)
        self.dirs[abspath] = os.path.dirname(abspath)
        return tokenize(text, abspath, self.env)
