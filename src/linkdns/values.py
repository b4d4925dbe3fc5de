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


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT`` as Go's net.SplitHostPort reads it (``1.2.3.4:53``, ``[::1]:53``,
    ``:9153``); a ValueError says what is wrong in Go's words. With ``default_port`` the port
    may be left out (``1.2.3.4``, ``[::1]``, a bare ``::1``). The one address parser: the
    HTTP plugins' ADDR, forward's upstreams, node-cache's metrics address."""
    t = text.strip()
    if t.startswith("["):
        end = t.find("]")
        if end < 0:
            raise ValueError(f"address {text}: missing ']' in address")
        host, rest = t[1:end], t[end + 1 :]
        if not rest and default_port is not None:
            return host, default_port
    else:
        i = t.rfind(":")
        if i < 0:
            if default_port is not None:
                return t, default_port
            raise ValueError(f"address {text}: missing port in address")
        host, rest = t[:i], t[i:]
        if ":" in host:
            if default_port is not None:  # a bare IPv6 address
                return t, default_port
            raise ValueError(f"address {text}: too many colons in address")
    if not rest.startswith(":"):
        raise ValueError(f"address {text}: missing port in address")
    p = rest[1:]
    if not p.isdigit() or int(p) > 65535:
        raise ValueError(f"address {text}: invalid port")
    return host, int(p)
