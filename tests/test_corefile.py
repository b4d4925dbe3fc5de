"""Corefile lexer and parser: table-driven cases (text -> structure, or -> error and line)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkdns.corefile import (
    Directive,
    ServerBlock,
    load_corefile,
    parse_corefile,
    parse_server_key,
    tokenize,
)
from linkdns.errors import ConfigError

ENV = {"ZONE": "Example.ORG", "PORT": "1053", "UP": "1.1.1.1", "SPACED": "a b"}


def shape_dirs(dirs: list[Directive]) -> list[tuple[Any, ...]]:
    """(line, name, *args) or, with a block, (line, name, *args, [children])."""
    out: list[tuple[Any, ...]] = []
    for d in dirs:
        row: tuple[Any, ...] = (d.line, d.name, *d.args)
        out.append(row if d.block is None else (*row, shape_dirs(d.block)))
    return out


def shape(blocks: list[ServerBlock]) -> list[tuple[Any, ...]]:
    """(keys as "zone" or "zone:port", line of first key, directives)."""
    return [
        (
            [k.zone if k.port is None else f"{k.zone}:{k.port}" for k in b.keys],
            b.line,
            shape_dirs(b.directives),
        )
        for b in blocks
    ]


def parse(text: str, **kw: Any) -> list[ServerBlock]:
    kw.setdefault("env", ENV)
    return parse_corefile(text, **kw)


# -- lexer ------------------------------------------------------------------------------------

LEX_CASES = [
    pytest.param(
        "a b c\nd e", [(1, "a"), (1, "b"), (1, "c"), (2, "d"), (2, "e")], id="words-lines"
    ),
    pytest.param("", [], id="empty"),
    pytest.param(" \t\n\r\n", [], id="only-whitespace"),
    pytest.param("\ufeffa", [(1, "a")], id="bom-dropped"),
    pytest.param("a\r\nb", [(1, "a"), (2, "b")], id="crlf"),
    pytest.param('x "a b" y', [(1, "x"), (1, "a b"), (1, "y")], id="quoted-spaces"),
    pytest.param(r'"say \"hi\""', [(1, 'say "hi"')], id="escaped-quote"),
    pytest.param(r'"a\nb\\"', [(1, r"a\nb\\")], id="other-backslashes-kept"),
    pytest.param(
        '"one\ntwo" next\nlast', [(1, "one\ntwo"), (2, "next"), (3, "last")], id="newline-in-quotes"
    ),
    pytest.param('""', [(1, "")], id="empty-quoted"),
    pytest.param('"ab"cd', [(1, "ab"), (1, "cd")], id="quote-ends-token"),
    pytest.param('ab"cd"', [(1, 'ab"cd"')], id="mid-token-quote-literal"),
    pytest.param("a # comment { }\nb", [(1, "a"), (2, "b")], id="comment-to-eol"),
    pytest.param("# whole line\n  # indented\nb", [(3, "b")], id="comment-lines"),
    pytest.param("a#b c", [(1, "a#b"), (1, "c")], id="hash-mid-token-kept"),
    pytest.param('"a # b"', [(1, "a # b")], id="hash-in-quotes-kept"),
    pytest.param("a {\n}", [(1, "a"), (1, "{"), (2, "}")], id="braces"),
    pytest.param("a{ {b }}", [(1, "a{"), (1, "{b"), (1, "}}")], id="braces-only-standalone"),
    pytest.param("{$ZONE}:{$PORT}", [(1, "Example.ORG:1053")], id="env-unix"),
    pytest.param("{%ZONE%}:{%PORT%}", [(1, "Example.ORG:1053")], id="env-windows"),
    pytest.param("{%ZONE%}/{$UP}", [(1, "Example.ORG/1.1.1.1")], id="env-both-forms"),
    pytest.param("x{$NOPE}y", [(1, "xy")], id="env-unset-empty"),
    pytest.param("{$SPACED}", [(1, "a b")], id="env-value-stays-one-token"),
    pytest.param('"v={$UP} w"', [(1, "v=1.1.1.1 w")], id="env-in-quotes"),
    pytest.param(
        "{%ZONE} {$} {%%}", [(1, "{%ZONE}"), (1, "{$}"), (1, "{%%}")], id="env-malformed-kept"
    ),
    pytest.param("{$PORT$}", [(1, "")], id="env-name-with-dollar"),
]


@pytest.mark.parametrize(("text", "expected"), LEX_CASES)
def test_lexer(text: str, expected: list[tuple[int, str]]) -> None:
    assert [(t.line, t.text) for t in tokenize(text, "Corefile", ENV)] == expected


def test_lexer_flags() -> None:
    toks = tokenize('a "{" {\n  b }', "F", {})
    assert [(t.text, t.newline, t.is_open, t.is_close) for t in toks] == [
        ("a", True, False, False),
        ("{", False, False, False),  # a quoted brace is plain text
        ("{", False, True, False),
        ("b", True, False, False),
        ("}", False, False, True),
    ]
    assert {t.file for t in toks} == {"F"}


def test_lexer_env_brace_is_not_structural() -> None:
    (tok,) = tokenize("{$B}", "F", {"B": "{"})
    assert tok.text == "{" and not tok.is_open


# -- server keys ------------------------------------------------------------------------------

REV17 = [f"{i}.0.10.in-addr.arpa." for i in range(128)]
KEY_CASES = [
    pytest.param("example.org", [("example.org.", None)], id="plain"),
    pytest.param("Example.ORG:53", [("example.org.", 53)], id="case-and-port"),
    pytest.param("example.org.", [("example.org.", None)], id="already-fqdn"),
    pytest.param("dns://example.org:1053", [("example.org.", 1053)], id="dns-scheme"),
    pytest.param("DNS://a", [("a.", None)], id="dns-scheme-case"),
    pytest.param(".", [(".", None)], id="root"),
    pytest.param(".:53", [(".", 53)], id="root-port"),
    pytest.param("dns://.:5353", [(".", 5353)], id="root-scheme-port"),
    pytest.param("a:0", [("a.", 0)], id="port-zero"),
    pytest.param("a:65535", [("a.", 65535)], id="port-max"),
    pytest.param("a:053", [("a.", 53)], id="port-leading-zero"),
    pytest.param("in-addr.arpa:53", [("in-addr.arpa.", 53)], id="reverse-parent"),
    pytest.param("10.0.0.0/8", [("10.in-addr.arpa.", None)], id="cidr-8"),
    pytest.param("172.16.0.0/16", [("16.172.in-addr.arpa.", None)], id="cidr-16"),
    pytest.param("10.0.0.0/24", [("0.0.10.in-addr.arpa.", None)], id="cidr-24"),
    pytest.param("10.1.2.3/24:53", [("2.1.10.in-addr.arpa.", 53)], id="cidr-host-bits-port"),
    pytest.param("10.1.2.3/32", [("3.2.1.10.in-addr.arpa.", None)], id="cidr-32"),
    pytest.param("0.0.0.0/0", [("in-addr.arpa.", None)], id="cidr-0"),
    pytest.param("10.0.0.0/17", [(z, None) for z in REV17], id="cidr-17"),
    pytest.param(
        "192.168.2.0/23:53",
        [("2.168.192.in-addr.arpa.", 53), ("3.168.192.in-addr.arpa.", 53)],
        id="cidr-23-port",
    ),
    pytest.param(
        "10.0.0.0/7", [("10.in-addr.arpa.", None), ("11.in-addr.arpa.", None)], id="cidr-7"
    ),
    pytest.param("2001:db8::/32", [("8.b.d.0.1.0.0.2.ip6.arpa.", None)], id="ipv6-32"),
    pytest.param(
        "fd00::/64:1053",
        [("0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", 1053)],
        id="ipv6-64-port",
    ),
    pytest.param(
        "2001:db8::/30",
        [(f"{n}.b.d.0.1.0.0.2.ip6.arpa.", None) for n in "89ab"],
        id="ipv6-30-nibble-split",
    ),
]


@pytest.mark.parametrize(("text", "expected"), KEY_CASES)
def test_server_key(text: str, expected: list[tuple[str, int | None]]) -> None:
    keys = parse_server_key(text, "F", 7)
    assert [(k.zone, k.port) for k in keys] == expected
    assert {(k.scheme, k.text) for k in keys} == {("dns", text)}


KEY_ERRORS = [
    pytest.param("tls://example.org", "unsupported scheme tls://", id="tls"),
    pytest.param("https://example.org", "unsupported scheme https://", id="https"),
    pytest.param("grpc://example.org:443", "unsupported scheme grpc://", id="grpc"),
    pytest.param("a:99999", "bad port 99999", id="port-range"),
    pytest.param("a:x53", "bad port 'x53'", id="port-text"),
    pytest.param("a:-1", "bad port '-1'", id="port-negative"),
    pytest.param("a:", "bad port: nothing after ':'", id="port-missing"),
    pytest.param(":53", "empty zone", id="no-zone"),
    pytest.param("dns://", "empty zone", id="scheme-only"),
    pytest.param("a..b", "empty label", id="empty-label"),
    pytest.param("x" * 64 + ".org", "longer than 63", id="long-label"),
    pytest.param(".".join(["abcdefgh"] * 30), "longer than 255", id="long-zone"),
    pytest.param("10.0.0.0/33", "bad CIDR", id="cidr-mask-range"),
    pytest.param("10.0.0.256/8", "bad CIDR", id="cidr-bad-ip"),
    pytest.param("10.0.0.0/x", "bad CIDR", id="cidr-mask-text"),
    pytest.param("example.org/24", "bad CIDR", id="cidr-name"),
    pytest.param("::/0", "bad CIDR", id="cidr-leading-colon"),
    pytest.param("fd00::/64:abc", "bad CIDR", id="cidr-ipv6-bad-port"),
    pytest.param("fd00::1", "invalid character ':'", id="ipv6-without-mask"),
]


@pytest.mark.parametrize(("text", "message"), KEY_ERRORS)
def test_server_key_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_server_key(text, "F", 7)
    assert message in info.value.msg
    assert (info.value.file, info.value.line) == ("F", 7)


# -- parser: structure ------------------------------------------------------------------------

PARSE_CASES = [
    pytest.param("", [], id="empty-file"),
    pytest.param("# only a comment\n\n", [], id="only-comments"),
    pytest.param(
        "example.org {\n  errors\n}", [(["example.org."], 1, [(2, "errors")])], id="one-block"
    ),
    pytest.param(
        "example.org:53, example.com {\n}",
        [(["example.org.:53", "example.com."], 1, [])],
        id="keys-comma",
    ),
    pytest.param(
        "a b,c , d ,e {\n}", [(["a.", "b.", "c.", "d.", "e."], 1, [])], id="keys-mixed-separators"
    ),
    pytest.param(
        "a,\n  b,\n  c {\n}", [(["a.", "b.", "c."], 1, [])], id="keys-comma-continues-line"
    ),
    pytest.param("Example.ORG:53 {\n}", [(["example.org.:53"], 1, [])], id="key-case"),
    pytest.param("{$ZONE}:{%PORT%} {\n}", [(["example.org.:1053"], 1, [])], id="key-env"),
    pytest.param(
        "10.0.0.0/23 fd00::/64 {\n}",
        [
            (
                [
                    "0.0.10.in-addr.arpa.",
                    "1.0.10.in-addr.arpa.",
                    "0" + ".0" * 13 + ".d.f.ip6.arpa.",
                ],
                1,
                [],
            )
        ],
        id="key-cidr-expands",
    ),
    pytest.param(
        "a {\n}\n\nb:54 {\n  whoami\n}\n",
        [(["a."], 1, []), (["b.:54"], 4, [(5, "whoami")])],
        id="two-blocks",
    ),
    pytest.param(
        "a { errors } b { log }",
        [(["a."], 1, [(1, "errors")]), (["b."], 1, [(1, "log")])],
        id="blocks-one-line",
    ),
    pytest.param(
        "example.org\n{\n  errors\n}",
        [(["example.org."], 1, [(3, "errors")])],
        id="brace-next-line",
    ),
    pytest.param(
        "example.org:53\nerrors\nforward . 8.8.8.8 {\n  force_tcp\n}\n",
        [
            (
                ["example.org.:53"],
                1,
                [(2, "errors"), (3, "forward", ".", "8.8.8.8", [(4, "force_tcp")])],
            )
        ],
        id="no-braces-single-block",
    ),
    pytest.param("localhost", [(["localhost."], 1, [])], id="no-braces-keys-only"),
    pytest.param(
        ". {\n  a 1\n  b {\n    c 2 {\n      d\n    }\n    e\n  }\n  f\n}",
        [(["."], 1, [(2, "a", "1"), (3, "b", [(4, "c", "2", [(5, "d")]), (7, "e")]), (9, "f")])],
        id="nested-blocks-lines",
    ),
    pytest.param(
        ". {\n  cache { success 9984 30 }\n  log {\n  }\n  ready\n}",
        [(["."], 1, [(2, "cache", [(2, "success", "9984", "30")]), (3, "log", []), (5, "ready")])],
        id="inline-and-empty-blocks",
    ),
    pytest.param(
        ". {\n  forward . 1.1.1.1 # upstream\n  # log\n  template a#b\n}",
        [(["."], 1, [(2, "forward", ".", "1.1.1.1"), (4, "template", "a#b")])],
        id="comments",
    ),
    pytest.param(
        '. {\n  answer "{{ .Name }} 60 IN A 1.2.3.4" "say \\"x\\""\n  "quoted name" {\n  }\n}',
        [
            (
                ["."],
                1,
                [(2, "answer", "{{ .Name }} 60 IN A 1.2.3.4", 'say "x"'), (3, "quoted name", [])],
            )
        ],
        id="quotes",
    ),
    pytest.param(
        '. {\n  txt "line1\nline2" x\n  next\n}',
        [(["."], 1, [(2, "txt", "line1\nline2", "x"), (4, "next")])],
        id="multiline-quote-keeps-lines",
    ),
    pytest.param(
        ". {\n  forward . {$UP} {%UP%} {$NOPE}x {$SPACED}\n}",
        [(["."], 1, [(2, "forward", ".", "1.1.1.1", "1.1.1.1", "x", "a b")])],
        id="env-args",
    ),
    pytest.param(
        '(common) {\n  errors\n  log {args[0]} {args.1}\n}\na {\n  import common x "y z"\n  cache\n}',
        [(["a."], 5, [(2, "errors"), (3, "log", "x", "y z"), (7, "cache")])],
        id="snippet-import-args",
    ),
    pytest.param(
        "(s) {\n  cache {args[0]}\n}\na {\n  import s 10\n}\nb {\n  import s 20\n}",
        [(["a."], 4, [(2, "cache", "10")]), (["b."], 7, [(2, "cache", "20")])],
        id="snippet-twice-different-args",
    ),
    pytest.param(
        "(inner) {\n  whoami\n}\n(outer) {\n  import inner\n  log\n}\na {\n  import outer\n}",
        [(["a."], 8, [(2, "whoami"), (6, "log")])],
        id="snippet-imports-snippet",
    ),
    pytest.param(
        "(opts) {\n  force_tcp\n  expire 10s\n}\na {\n  forward . 1.1.1.1 {\n    import opts\n  }\n}",
        [(["a."], 5, [(6, "forward", ".", "1.1.1.1", [(2, "force_tcp"), (3, "expire", "10s")])])],
        id="import-in-directive-block",
    ),
    pytest.param(
        "(s) { a 1 }\nx { import s }",
        [(["x."], 2, [(1, "a", "1")])],
        id="import-inline",
    ),
    pytest.param(
        "(site) {\n  {args[0]} {\n    whoami\n  }\n}\nimport site a.org\nimport site b.org",
        [(["a.org."], 2, [(3, "whoami")]), (["b.org."], 2, [(3, "whoami")])],
        id="import-blocks-at-top-level",
    ),
    pytest.param(
        "(x) {\n}\na {\n  import x\n}",
        [(["a."], 3, [])],
        id="empty-snippet",
    ),
    pytest.param(
        "a {\n  log import foo\n}",
        [(["a."], 1, [(2, "log", "import", "foo")])],
        id="import-as-argument-is-literal",
    ),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse(text: str, expected: list[tuple[Any, ...]]) -> None:
    assert shape(parse(text)) == expected


def test_parse_records_file_and_key_text() -> None:
    (block,) = parse("Example.org:53, dns://b {\n  errors\n}", filename="conf/Corefile")
    assert [k.text for k in block.keys] == ["Example.org:53", "dns://b"]
    assert (block.file, block.line) == ("conf/Corefile", 1)
    assert block.directives == [Directive("errors", [], "conf/Corefile", 2, None)]


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINKDNS_TEST_ZONE", "from.env")
    (block,) = parse_corefile("{$LINKDNS_TEST_ZONE} {\n}")
    assert block.keys[0].zone == "from.env."


# -- parser: errors ---------------------------------------------------------------------------

ERROR_CASES = [
    pytest.param("}", "Unexpected '}'", 1, id="close-at-top"),
    pytest.param("a {\n}\n}", "Unexpected '}'", 3, id="close-after-block"),
    pytest.param("a\nerrors\n}", "Unexpected '}'", 3, id="close-in-braceless"),
    pytest.param("a {\n  errors\n", "Unexpected EOF", 1, id="eof-server-block"),
    pytest.param("a {\n  b {\n    c\n}", "Unexpected EOF", 1, id="eof-outer-unclosed"),
    pytest.param("a {\n  b {\n    c {\n    }\n", "Unexpected EOF", 2, id="eof-nested"),
    pytest.param("(s) {\n  a\n", "Unexpected EOF", 1, id="eof-snippet"),
    pytest.param('a {\n  log "oops\n}\n', "unterminated quoted string", 2, id="unterminated-quote"),
    pytest.param("a {\n  forward . x\n  {\n  }\n}", "unexpected '{'", 3, id="brace-own-line"),
    pytest.param("a {\n  b {\n  } c\n}", "unexpected 'c' after '}'", 3, id="token-after-close"),
    pytest.param("a, {\n}", "check for extra comma", 1, id="trailing-comma-brace"),
    pytest.param("a,", "Unexpected EOF", 1, id="trailing-comma-eof"),
    pytest.param('"" {\n}', "empty server key", 1, id="empty-key-quoted"),
    pytest.param("\n{$NOPE} {\n}", "empty server key in '{$NOPE}'", 2, id="empty-key-env"),
    pytest.param("a,,b {\n}", "empty server key", 1, id="empty-key-commas"),
    pytest.param(", a {\n}", "empty server key", 1, id="empty-key-leading-comma"),
    pytest.param("{\n  errors\n}", "expected server key(s) before '{'", 1, id="no-keys"),
    pytest.param("a{\n}", "cannot end with '{'", 1, id="key-glued-brace"),
    pytest.param("\ntls://a {\n}", "unsupported scheme tls://", 2, id="scheme"),
    pytest.param("a:99999 {\n}", "bad port 99999", 1, id="port"),
    pytest.param("a {\n}\n10.0.0.0/33 {\n}", "bad CIDR", 3, id="cidr"),
    pytest.param("a {\n  import nope\n}", "unknown snippet", 2, id="unknown-snippet"),
    pytest.param("a {\n  import\n}", "import needs a snippet name", 2, id="import-no-args"),
    pytest.param(
        "(s) {\n}\n(s) {\n}",
        "redeclaration of previously declared snippet s",
        3,
        id="snippet-redeclared",
    ),
    pytest.param("(s)\nerrors", "must be followed by '{'", 1, id="snippet-no-brace"),
    pytest.param("(s) a {\n}", "must be defined alone", 1, id="snippet-among-keys"),
    pytest.param("() {\n}", "empty snippet name", 1, id="snippet-empty-name"),
    pytest.param(
        "(s) {\n  import s\n}\na {\n  import s\n}", "import cycle: ", 2, id="snippet-self-cycle"
    ),
    pytest.param(
        "(a) {\n  import b\n}\n(b) {\n  import a\n}\nx {\n  import a\n}",
        "snippet a -> snippet b -> snippet a",
        5,
        id="snippet-cycle",
    ),
    pytest.param(
        "(s) {\n  log {args[1]}\n}\na {\n  import s x\n}",
        "{args[1]} used but import gave 1",
        5,
        id="args-range",
    ),
    pytest.param("a\nb\nexample.com {\n}", "has no braces", 3, id="braceless-then-block"),
    pytest.param("a {\n}\nb\nerrors", "only server block", 3, id="braceless-after-block"),
    pytest.param(
        "a {\n  import x*/*.conf\n}", "only contain one wildcard", 2, id="glob-two-wildcards"
    ),
    pytest.param("a {" + " b {" * 120 + "}" * 121, "nested deeper", 1, id="too-deep"),
]


@pytest.mark.parametrize(("text", "message", "line"), ERROR_CASES)
def test_parse_errors(text: str, message: str, line: int) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, filename="Corefile", base_dir="/nonexistent-linkdns")
    err = info.value
    assert message in err.msg
    assert (err.file, err.line) == ("Corefile", line)
    assert str(err).startswith(f"Corefile:{line} - ")


def test_import_expansion_cap() -> None:
    """Non-cyclic fan-out (each snippet imports the previous one twice) hits the cap."""
    text = "(s0) {\n  x\n}\n" + "".join(
        f"(s{i}) {{\n  import s{i - 1}\n  import s{i - 1}\n}}\n" for i in range(1, 11)
    )
    with pytest.raises(ConfigError, match=r"maximum snippet import depth \(1000\) exceeded"):
        parse(text + "a {\n  import s10\n}\n")


# -- imports from files -----------------------------------------------------------------------

FILE_CASES = [
    pytest.param(
        {"conf.d/b.conf": "b.org {\n  log\n}\n", "conf.d/a.conf": "a.org {\n  errors\n}\n"},
        "import conf.d/*.conf\n",
        [(["a.org."], 1, [(2, "errors")]), (["b.org."], 1, [(2, "log")])],
        id="glob-top-level-sorted",
    ),
    pytest.param(
        {"plugins.inc": "errors\ncache 30\n"},
        ". {\n  import plugins.inc\n  log\n}",
        [(["."], 1, [(1, "errors"), (2, "cache", "30"), (3, "log")])],
        id="file-in-block",
    ),
    pytest.param(
        {"sub/a.conf": "a {\n  import b.inc\n}\n", "sub/b.inc": "whoami\n"},
        "import sub/a.conf",
        [(["a."], 1, [(1, "whoami")])],
        id="nested-import-relative-to-importer",
    ),
    pytest.param(
        {"fwd.inc": "forward . {args[0]}\n"},
        ". {\n  import fwd.inc 9.9.9.9\n}",
        [(["."], 1, [(1, "forward", ".", "9.9.9.9")])],
        id="file-import-args",
    ),
    pytest.param({}, "import none/*.conf\n. {\n}", [(["."], 2, [])], id="glob-no-match-ok"),
    pytest.param(
        {"snips.conf": "(s) {\n  errors\n}\n"},
        "import snips.conf\n. {\n  import s\n}",
        [(["."], 2, [(2, "errors")])],
        id="snippet-from-file",
    ),
]


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)


@pytest.mark.parametrize(("files", "text", "expected"), FILE_CASES)
def test_file_imports(
    tmp_path: Path, files: dict[str, str], text: str, expected: list[tuple[Any, ...]]
) -> None:
    write_files(tmp_path, files)
    assert shape(parse(text, base_dir=str(tmp_path))) == expected


def test_file_import_token_positions(tmp_path: Path) -> None:
    write_files(tmp_path, {"conf.d/a.conf": "\na.org {\n  errors\n}\n"})
    (block,) = parse("import conf.d/*.conf", base_dir=str(tmp_path))
    path = str(tmp_path / "conf.d" / "a.conf")
    assert (block.file, block.line) == (path, 2)
    assert (block.directives[0].file, block.directives[0].line) == (path, 3)


def test_glob_without_match_logs_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="linkdns.corefile.parse"):
        assert parse("import *.none", base_dir=str(tmp_path)) == []
    assert "No files matching import glob pattern: *.none" in caplog.text


FILE_ERRORS = [
    pytest.param(
        {},
        "a {\n  import missing.conf\n}",
        "missing file to import: 'missing.conf'",
        "Corefile",
        2,
        id="missing-file",
    ),
    pytest.param(
        {"a.conf": "import b.conf\n", "b.conf": "\nimport a.conf\n"},
        "import a.conf",
        "import cycle: ",
        "b.conf",
        2,
        id="file-cycle",
    ),
    pytest.param(
        {"Corefile": "import Corefile\n"},
        "import Corefile",
        "import cycle: ",
        "Corefile",
        1,
        id="self-import",
    ),
    pytest.param(
        {"bad.conf": "a {\n  b\n"},
        "import bad.conf",
        "Unexpected EOF",
        "bad.conf",
        1,
        id="error-in-imported-file",
    ),
    pytest.param({"d/x": ""}, "import d", "is a directory", "Corefile", 1, id="directory"),
    pytest.param(
        {"q.conf": 'a "b'},
        "import q.conf",
        "unterminated quoted string",
        "q.conf",
        1,
        id="lex-error-in-import",
    ),
]


@pytest.mark.parametrize(("files", "text", "message", "errfile", "line"), FILE_ERRORS)
def test_file_import_errors(
    tmp_path: Path, files: dict[str, str], text: str, message: str, errfile: str, line: int
) -> None:
    write_files(tmp_path, files)
    with pytest.raises(ConfigError) as info:
        parse(text, base_dir=str(tmp_path))
    assert message in info.value.msg
    assert os.path.basename(info.value.file) == errfile
    assert info.value.line == line


def test_load_corefile(tmp_path: Path) -> None:
    write_files(tmp_path, {"Corefile": ". {\n  import inc/*.inc\n}\n", "inc/a.inc": "errors\n"})
    path = str(tmp_path / "Corefile")
    (block,) = load_corefile(path, env={})
    assert (block.file, block.line) == (path, 1)
    assert shape_dirs(block.directives) == [(1, "errors")]


def test_load_corefile_cycle_through_main_file(tmp_path: Path) -> None:
    write_files(
        tmp_path, {"Corefile": ". {\n}\nimport more.conf\n", "more.conf": "import Corefile\n"}
    )
    with pytest.raises(
        ConfigError, match=r"import cycle: .*Corefile -> .*more\.conf -> .*Corefile"
    ):
        load_corefile(str(tmp_path / "Corefile"), env={})


def test_load_corefile_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read Corefile"):
        load_corefile(str(tmp_path / "nope"))


# -- the NodeLocal DNSCache Corefile ----------------------------------------------------------

NODELOCAL = """\
cluster.local:53 {
    errors
    cache {
            success 9984 30
            denial 9984 5
    }
    reload
    loop
    bind 169.254.20.10 10.0.0.10
    forward . __PILLAR__CLUSTER__DNS__ {
            force_tcp
    }
    prometheus :9253
    health 169.254.20.10:8080
    }
in-addr.arpa:53 {
    errors
    cache 30
    reload
    loop
    bind 169.254.20.10 10.0.0.10
    forward . __PILLAR__CLUSTER__DNS__ {
            force_tcp
    }
    prometheus :9253
    }
ip6.arpa:53 {
    errors
    cache 30
    reload
    loop
    bind 169.254.20.10 10.0.0.10
    forward . __PILLAR__CLUSTER__DNS__ {
            force_tcp
    }
    prometheus :9253
    }
.:53 {
    errors
    cache 30
    reload
    loop
    bind 169.254.20.10 10.0.0.10
    forward . __PILLAR__UPSTREAM__SERVERS__
    prometheus :9253
    }
"""


def _reverse_block(first: int) -> list[tuple[Any, ...]]:
    return [
        (first, "errors"),
        (first + 1, "cache", "30"),
        (first + 2, "reload"),
        (first + 3, "loop"),
        (first + 4, "bind", "169.254.20.10", "10.0.0.10"),
        (first + 5, "forward", ".", "__PILLAR__CLUSTER__DNS__", [(first + 6, "force_tcp")]),
        (first + 8, "prometheus", ":9253"),
    ]


def test_nodelocal_dnscache_corefile() -> None:
    assert shape(parse(NODELOCAL)) == [
        (
            ["cluster.local.:53"],
            1,
            [
                (2, "errors"),
                (3, "cache", [(4, "success", "9984", "30"), (5, "denial", "9984", "5")]),
                (7, "reload"),
                (8, "loop"),
                (9, "bind", "169.254.20.10", "10.0.0.10"),
                (10, "forward", ".", "__PILLAR__CLUSTER__DNS__", [(11, "force_tcp")]),
                (13, "prometheus", ":9253"),
                (14, "health", "169.254.20.10:8080"),
            ],
        ),
        (["in-addr.arpa.:53"], 16, _reverse_block(17)),
        (["ip6.arpa.:53"], 27, _reverse_block(28)),
        (
            [".:53"],
            38,
            [
                (39, "errors"),
                (40, "cache", "30"),
                (41, "reload"),
                (42, "loop"),
                (43, "bind", "169.254.20.10", "10.0.0.10"),
                (44, "forward", ".", "__PILLAR__UPSTREAM__SERVERS__"),
                (45, "prometheus", ":9253"),
            ],
        ),
    ]


# -- fuzz -------------------------------------------------------------------------------------

_WORDS = [
    *[
        "import",
        "(s)",
        "s",
        "{",
        "}",
        "{}",
        ",",
        "a,",
        ".",
        ".:53",
        "a.org",
        "dns://x",
        "tls://x",
        "10.0.0.0/17",
        "fd00::/64",
        "::/0",
    ],
    *[
        "x:99999",
        '"',
        '"q',
        'q"',
        "#",
        "#c",
        "\\",
        "{args[0]}",
        "{args[3]}",
        "{$V}",
        "{%V%}",
        "*.conf",
        "*",
        "errors",
    ],
    *"\n\n \t",
]
_fuzz_text = st.one_of(
    st.text(alphabet=st.sampled_from(list('{}(),.:/"#\\$% \n\tabs0123*[]?-')), max_size=80),
    st.lists(st.sampled_from(_WORDS), max_size=40).map(" ".join),
    st.text(max_size=60),
)


def test_fuzz_only_config_errors(tmp_path: Path) -> None:
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_fuzz_text)
    def run(text: str) -> None:
        try:
            blocks = parse_corefile(text, env={"V": "v"}, base_dir=str(tmp_path))
        except ConfigError as e:
            assert e.line >= 0 and str(e)
        else:
            assert all(isinstance(b, ServerBlock) and b.keys for b in blocks)

    run()
