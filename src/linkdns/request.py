"""Request: one query as the plugin chain sees it (raw bytes, peer, protocol, scanned fields)."""

from __future__ import annotations

import time
from typing import Any

from linkdns import wire
from linkdns.wire import Query

_perf = time.perf_counter


class Request:
    """A scanned query plus where it came from. Cheap to make: fields decode lazily."""

    __slots__ = ("meta", "peer", "proto", "q", "server", "start", "zone")

    def __init__(self, q: Query, peer: Any, proto: str, server: str = "", zone: str = ".") -> None:
        self.q = q
        self.peer = peer  # (host, port[, flow, scope])
        self.proto = proto  # "udp" | "tcp"
        self.server = server  # "dns://ADDR:PORT"
        self.zone = zone  # matched zone, e.g. "example.org."
        self.start = _perf()
        self.meta: dict[str, Any] = {}

    @property
    def data(self) -> bytes:
        return self.q.data

    @property
    def name(self) -> str:
        return self.q.name

    @property
    def qtype(self) -> int:
        return self.q.qtype

    @property
    def family(self) -> int:
        """1 for IPv4, 2 for IPv6 (CoreDNS's label values)."""
        return 2 if ":" in str(self.peer[0]) else 1

    @property
    def type_name(self) -> str:
        return type_name(self.q.qtype)

    def match(self, reply: bytes) -> bool:
        """True when ``reply`` answers this query: a response, same question (any case)."""
        q = self.q
        if len(reply) < wire.HEADER_LEN or not (reply[2] & 0x80) or reply[4:6] != b"\x00\x01":
            return False
        return wire.same_question(reply, q.qname_lower, q.data[q.qname_end : q.q_end])

    def __repr__(self) -> str:
        return f"<Request {self.proto} {self.peer[0]}:{self.peer[1]} {self.name} {self.type_name}>"


_TYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
    28: "AAAA", 33: "SRV", 35: "NAPTR", 39: "DNAME", 41: "OPT", 43: "DS", 46: "RRSIG",
    47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 64: "SVCB",
    65: "HTTPS", 99: "SPF", 251: "IXFR", 252: "AXFR", 255: "ANY", 257: "CAA",
}
_CLASSES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}


def type_name(t: int) -> str:
    return _TYPES.get(t) or f"TYPE{t}"


def class_name(c: int) -> str:
    return _CLASSES.get(c) or f"CLASS{c}"
