"""Parsing of values that Corefile arguments carry: durations, sizes, addresses."""

from __future__ import annotations

import re

_DUR = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration subset (``500ms``, ``1m30s``, ``0``); seconds as float.

    A bare integer is taken as seconds, as several CoreDNS plugins do. Raises ValueError.
    """
    t = text.strip()
    if re.fullmatch(r"\d+", t):
        return float(t)
    pos = 0
    total = 0.0
    for m in _DUR.finditer(t):
        if m.start() != pos:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(t) or not t:
        raise ValueError(f"invalid duration {text!r}")
    return total


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``1.2.3.4``, ``1.2.3.4:53``, ``[::1]:53``, ``::1``, ``:9153`` -> (host, port).

    Raises ValueError for a bad port. The host is returned as written ("" means all).
    """
    t = text.strip()
    if t.startswith("["):
        end = t.find("]")
        if end < 0:
            raise ValueError(f"bad address {text!r}")
        host, rest = t[1:end], t[end + 1 :]
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}")
        return host, _port(rest[1:], text)
    if t.count(":") > 1:  # bare IPv6
        return t, default_port
    if ":" in t:
        host, p = t.rsplit(":", 1)
        return host, _port(p, text)
    return t, default_port


def _port(p: str, text: str) -> int:
    if not p.isdigit() or not 0 <= int(p) <= 65535:
        raise ValueError(f"bad port in {text!r}")
    return int(p)

