"""Server block keys: ``[dns://]ZONE[:PORT]`` with CoreDNS reverse-CIDR expansion.

Mirrors CoreDNS ``plugin.SplitHostPort`` and ``plugin/pkg/cidr``: the port is the number after the
last colon, a ``IP/MASK`` zone becomes the reverse zone(s) under in-addr.arpa. / ip6.arpa., split
on octet (IPv4) or nibble (IPv6) boundaries, so ``10.0.0.0/17`` yields 128 ``/24`` zones.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from linkdns.errors import ConfigError

__all__ = ["ServerKey", "parse_server_key"]

_MASK_RE = re.compile(r"[0-9]{1,3}")
_BAD_ZONE_CHARS = frozenset(':{}"')
_Fail = Callable[[str], ConfigError]


@dataclass(frozen=True)
class ServerKey:
    """One zone a server block answers for."""

    scheme: str  # always "dns"
    zone: str  # lowercase FQDN with trailing dot, "." for the root
    port: int | None  # None when the key has no port
    text: str  # the key as written (after environment substitution)


def parse_server_key(text: str, file: str = "", line: int = 0) -> list[ServerKey]:
    """Parse one key; a CIDR key may expand to several zones. Raises ConfigError."""

    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{msg} in server key {text!r}", file, line)

    rest = text
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme.lower() != "dns":
            raise fail(f"unsupported scheme {scheme}:// (only dns:// is supported)")
    port: int | None = None
    colon = rest.rfind(":")
    if colon != -1:
        tail = rest[colon + 1 :]
        if tail.isascii() and tail.isdigit():
            port, rest = int(tail), rest[:colon]
            if port > 65535:
                raise fail(f"bad port {tail} (must be 0-65535)")
        elif "/" not in rest:  # IPv6 CIDRs hold colons; anything else after ':' is a port
            raise fail(f"bad port {tail!r}" if tail else "bad port: nothing after ':'")
    if not rest:
        raise fail("empty zone")
    zones = _reverse_zones(rest, fail) if "/" in rest else [_normalize_zone(rest, fail)]
    return [ServerKey("dns", zone, port, text) for zone in zones]


def _normalize_zone(host: str, fail: _Fail) -> str:
    zone = host.lower()
    if zone == ".":
        return zone
    if not zone.endswith("."):
        zone += "."
    bad = _BAD_ZONE_CHARS.intersection(zone)
    if bad or any(c.isspace() for c in zone):
        raise fail(f"invalid character {''.join(sorted(bad)) or 'whitespace'!r} in zone")
    labels = zone[:-1].split(".")
    if any(not label for label in labels):
        raise fail("empty label in zone")
    if any(len(label.encode()) > 63 for label in labels):
        raise fail("zone label longer than 63 octets")
    if len(zone.encode()) > 255:
        raise fail("zone longer than 255 octets")
    return zone


def _reverse_zones(host: str, fail: _Fail) -> list[str]:
    """Reverse zones for ``IP/MASK``, split on octet/nibble boundaries like CoreDNS."""
    addr, _, mask = host.partition("/")
    # CoreDNS refuses CIDRs that start with ':' or '0' and hold a ':' (e.g. ::/0).
    if not _MASK_RE.fullmatch(mask) or host[0] == ":" or (host[0] == "0" and ":" in host):
        raise fail(f"bad CIDR {host!r}")
    try:
        net = ipaddress.ip_network(f"{addr}/{int(mask)}", strict=False)
    except ValueError:
        raise fail(f"bad CIDR {host!r}")
    step = 8 if net.version == 4 else 4
    prefix = -(-net.prefixlen // step) * step  # round up to the boundary
    subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [net]
    if prefix != net.prefixlen:
        subnets = list(net.subnets(new_prefix=prefix))
    zones = []
    for sub in subnets:
        if sub.version == 4:
            digits = str(sub.network_address).split(".")[: prefix // 8]
            suffix = "in-addr.arpa."
        else:
            digits = list(sub.network_address.exploded.replace(":", ""))[: prefix // 4]
            suffix = "ip6.arpa."
        zones.append("".join(d + "." for d in reversed(digits)) + suffix)
    return zones
