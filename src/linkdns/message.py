"""The only module that imports dnslib: full parse/pack on the slow path.

The hot path never comes here; replies are parsed at most once, when a plugin really needs
the records (repacking with compression before truncation, classification fallbacks).
"""

from __future__ import annotations

from typing import Any

import dnslib

from linkdns import replies, wire
from linkdns.errors import WireError


def parse(buf: bytes) -> Any:
    """A dnslib.DNSRecord, or WireError if dnslib can't read it."""
    try:
        return dnslib.DNSRecord.parse(buf)
    except Exception as e:  # dnslib raises many types (DNSError, struct.error, IndexError...)
        raise WireError(f"unparseable message: {e}") from None


def compress(buf: bytes) -> bytes:
    """The same message packed with name compression (the smaller of the two is returned)."""
    try:
        packed = bytes(parse(buf).pack())
    except Exception:
        return buf
    return packed if len(packed) < len(buf) else buf


def truncate(buf: bytes, size: int) -> bytes:
    """Fit a reply into ``size`` bytes: compress first, then drop records from the end (TC=1)."""
    if len(buf) <= size:
        return buf
    smaller = compress(buf)
    if len(smaller) <= size:
        return smaller
    try:
        return replies.truncate_wire(smaller, size)
    except WireError:
        # Can't walk it: answer with the header and question only, TC set.
        q_end = wire.HEADER_LEN
        try:
            q_end, _ = replies.walk(smaller)
        except WireError:
            pass
        head = bytearray(smaller[:q_end])
        head[2] |= 0x02
        head[6:12] = b"\x00" * 6
        return bytes(head)


class _PlainBuffer(dnslib.DNSBuffer):  # type: ignore[misc]
    """A DNSBuffer that never compresses names (a record packed alone must stand alone)."""

    def encode_name(self, name: Any) -> None:
        self.encode_name_nocompress(name)


def rr_from_text(text: str) -> bytes:
    """One resource record in zone-file text, packed to wire form without name compression.

    Read as miekg/dns's NewRR does for a single line: relative names are made absolute from
    the root, a missing TTL is 3600, a missing class IN, parentheses group. WireError when the
    text is not exactly one record dnslib can read.
    """
    flat, quoted = [], False
    for ch in text:  # one-line parentheses are grouping only: drop them outside quotes
        if ch == '"':
            quoted = not quoted
        flat.append(" " if ch in "()" and not quoted else ch)
    try:
        rrs = list(dnslib.ZoneParser("".join(flat), origin=".", ttl=3600))
        if len(rrs) != 1:
            raise WireError(f"want one record, got {len(rrs)}")
        buf = _PlainBuffer()
        rrs[0].pack(buf)
    except WireError:
        raise
    except Exception as e:  # dnslib raises many types (DNSError, ValueError, IndexError...)
        raise WireError(f"bad record {text!r}: {e}") from None
    return bytes(buf.data)
