"""The hosts(5) data: parsing, the lookup maps and reverse-name decoding (no I/O, no DNS).

Follows CoreDNS's plugin/hosts/hostsfile.go: ``#`` starts a comment, a line is
``ADDRESS NAME [ALIASES...]`` split on whitespace, lines with fewer than two fields or an
address that does not parse are skipped, an IPv6 zone (``%eth0``) is dropped, names are
lowercased and made fully qualified, and names outside the plugin's zones are dropped. An
IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) counts as IPv4, as Go's ``To4()`` has it: it
gives an A record and an in-addr.arpa PTR.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from linkdns import wire
from linkdns.errors import WireError
from linkdns.zones import in_zones

_IP4_ARPA = ".in-addr.arpa."
_IP6_ARPA = ".ip6.arpa."
_HEX = frozenset("0123456789abcdef")


def parse_ip(text: str) -> bytes | None:
    """Packed address (4 bytes for IPv4 and IPv4-mapped IPv6, else 16), None if not one."""
    text = text.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.packed
    return ip.packed


def reverse_key(name: str) -> bytes | None:
    """The packed address a reverse name stands for (``4.3.2.1.in-addr.arpa.`` -> 1.2.3.4),
    as CoreDNS's dnsutil.ExtractAddressFromReverse; None when it is not a whole address."""
    if name.endswith(_IP4_ARPA):
        labels = name[: -len(_IP4_ARPA)].split(".")
        key = parse_ip(".".join(reversed(labels))) if len(labels) == 4 else None
        return key if key is not None and len(key) == 4 else None
    if name.endswith(_IP6_ARPA):
        nibbles = name[: -len(_IP6_ARPA)].split(".")
        if len(nibbles) != 32 or any(len(n) != 1 or n not in _HEX for n in nibbles):
            return None
        packed = bytes.fromhex("".join(reversed(nibbles)))
        return parse_ip(str(ipaddress.IPv6Address(packed)))
    return None


@dataclass
class HostsMap:
    """One parsed source (the file, or the Corefile's inline lines).

    Lists keep every occurrence, as CoreDNS's maps do (``len`` counts them the same way);
    answers drop repeats.
    """

    #: lowercase FQDN -> packed IPv4 addresses
    name4: dict[str, list[bytes]] = field(default_factory=dict)
    #: lowercase FQDN -> packed IPv6 addresses
    name6: dict[str, list[bytes]] = field(default_factory=dict)
    #: packed address -> wire-form names (the PTR targets); empty with ``no_reverse``
    addr: dict[bytes, list[bytes]] = field(default_factory=dict)

    def __len__(self) -> int:
        """Addresses of both families plus reverse names (CoreDNS's Map.Len)."""
        return (sum(map(len, self.name4.values())) + sum(map(len, self.name6.values()))
                + sum(map(len, self.addr.values())))


def _name(field_text: str) -> tuple[str, bytes] | None:
    """(lowercase FQDN, wire form) of a hosts-file name; None when it is no valid DNS name."""
    try:
        w = wire.text_to_name(field_text if field_text.endswith(".") else field_text + ".")
    except (WireError, UnicodeEncodeError):
        return None
    return wire.name_to_text(w), w


def parse_hosts(text: str, origins: Iterable[str], reverse: bool = True) -> HostsMap:
    """Parse hosts(5) ``text``, keeping the names inside ``origins``."""
    zones = list(origins)
    m = HostsMap()
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        packed = parse_ip(fields[0])
        if packed is None:
            continue
        names = m.name4 if len(packed) == 4 else m.name6
        for f in fields[1:]:
            got = _name(f)
            if got is None or not in_zones(got[0], zones):
                continue
            name, w = got
            names.setdefault(name, []).append(packed)
            if reverse:
                m.addr.setdefault(packed, []).append(w)
    return m


@dataclass(frozen=True)
class HostsData:
    """What the handler answers from: the file's map and the inline map (file first)."""

    file: HostsMap
    inline: HostsMap

    def v4(self, name: str) -> list[bytes]:
        return _unique(self.file.name4.get(name, ()), self.inline.name4.get(name, ()))

    def v6(self, name: str) -> list[bytes]:
        return _unique(self.file.name6.get(name, ()), self.inline.name6.get(name, ()))

    def ptr(self, key: bytes) -> list[bytes]:
        return _unique(self.file.addr.get(key, ()), self.inline.addr.get(key, ()))

    def exists(self, name: str) -> bool:
        """The name has an address of either family (CoreDNS's otherRecordsExist)."""
        return any(name in m for m in (self.file.name4, self.inline.name4, self.file.name6,
                                       self.inline.name6))

    def __len__(self) -> int:
        return len(self.file) + len(self.inline)


def _unique(a: Iterable[bytes], b: Iterable[bytes]) -> list[bytes]:
    return list(dict.fromkeys([*a, *b]))
