"""A whole message's records, walked from its bytes: where each record sits (:func:`walk`),
the message without its OPT, cut to a client's size, and fitted to the client that asked.

The slow path's side of the wire format (storing a reply, relaying it, truncating it); the
hit path and the query scan are in :mod:`linkdns.wire`. Nothing here imports dnslib.
"""

from __future__ import annotations

import struct

from linkdns.errors import WireError
from linkdns.wire import HEADER_LEN, T_OPT, TC, Query, reply_opt, same_question, skip_name

_U16 = struct.Struct(">H")
_RR_FIXED = struct.Struct(">HHIH")  # type, class, ttl, rdlength
_HEADER = struct.Struct(">HHHHHH")


class RR:
    """Where one resource record sits in a message."""

    __slots__ = ("end", "rclass", "rdata", "rdlen", "rtype", "section", "start", "ttl")

    def __init__(
        self, section: int, start: int, rtype: int, rclass: int, ttl: int, rdata: int, rdlen: int
    ) -> None:
        self.section = section  # 0 answer, 1 authority, 2 additional
        self.start = start
        self.rtype = rtype
        self.rclass = rclass
        self.ttl = ttl
        self.rdata = rdata
        self.rdlen = rdlen
        self.end = rdata + rdlen

    @property
    def ttl_offset(self) -> int:
        return self.rdata - 6


def header_counts(buf: bytes | bytearray) -> tuple[int, int, int, int]:
    _, _, qd, an, ns, ar = _HEADER.unpack_from(buf, 0)
    return qd, an, ns, ar


def walk(buf: bytes | bytearray) -> tuple[int, list[RR]]:
    """Return (end of question section, every RR in order). Raises WireError if malformed."""
    if len(buf) < HEADER_LEN:
        raise WireError("message shorter than a header")
    _, _, qd, an, ns, ar = _HEADER.unpack_from(buf, 0)
    off = HEADER_LEN
    for _ in range(qd):
        off = skip_name(buf, off) + 4
    n = len(buf)
    if off > n:
        raise WireError("question runs past the end")
    q_end = off
    rrs: list[RR] = []
    for section, count in ((0, an), (1, ns), (2, ar)):
        for _ in range(count):
            start = off
            # The usual owner name is one compression pointer: skip it without a call.
            if off + 2 <= n and buf[off] >= 0xC0:
                off += 2
            else:
                off = skip_name(buf, off)
            if off + 10 > n:
                raise WireError("record header runs past the end")
            rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(buf, off)
            off += 10
            if off + rdlen > n:
                raise WireError("record data runs past the end")
            rrs.append(RR(section, start, rtype, rclass, ttl, off, rdlen))
            off += rdlen
    if off != n:
        raise WireError("trailing bytes after the last record")
    return q_end, rrs


def strip_opt(buf: bytes) -> bytes:
    """The message without its OPT record(s) (other additional records are kept)."""
    _, _, _, ar = header_counts(buf)
    if not ar:
        return buf
    _, rrs = walk(buf)
    opts = [r for r in rrs if r.rtype == T_OPT and r.section == 2]
    if not opts:
        return buf
    out = bytearray()
    prev = 0
    for r in opts:
        out += buf[prev : r.start]
        prev = r.end
    out += buf[prev:]
    _U16.pack_into(out, 10, ar - len(opts))
    return bytes(out)


def finish_reply(q: Query, reply: bytes) -> bytes:
    """Make an upstream/plugin reply fit this client: its ID, its question bytes, its OPT.

    The reply's own OPT (if any) is removed and, if the client sent one, ours is appended.
    """
    try:
        body = strip_opt(reply)
    except WireError:
        body = reply
    out = q.data[0:2] + body[2:]
    if same_question(body, q.qname_lower, q.data[q.qname_end : q.q_end]):
        out = out[:HEADER_LEN] + q.question + out[q.q_end :]
    if q.has_opt:
        ar = (out[10] << 8 | out[11]) + 1
        out = out[:10] + _U16.pack(ar) + out[12:] + reply_opt(q)
    return out


def truncate_wire(buf: bytes, size: int) -> bytes:
    """Drop records from the end until the message fits ``size`` bytes; set TC=1.

    The OPT record is kept. Dropping trailing records never breaks compression pointers
    (they only point backwards). Used on the slow path after the message was compressed.
    """
    if len(buf) <= size:
        return buf
    q_end, rrs = walk(buf)
    opt = b""
    body = [r for r in rrs if not (r.rtype == T_OPT and r.section == 2)]
    for r in rrs:
        if r.rtype == T_OPT and r.section == 2:
            opt = buf[r.start : r.end]
    budget = size - len(opt)
    keep = 0
    length = q_end
    for r in body:
        if length + (r.end - r.start) > budget:
            break
        length += r.end - r.start
        keep += 1
    kept = body[:keep]
    counts = [0, 0, 0]
    parts = [buf[:q_end]]
    for r in kept:
        counts[r.section] += 1
        parts.append(buf[r.start : r.end])
    out = bytearray(b"".join(parts) + opt)
    flags = (out[2] << 8 | out[3]) | TC
    _U16.pack_into(out, 2, flags)
    _U16.pack_into(out, 6, counts[0])
    _U16.pack_into(out, 8, counts[1])
    _U16.pack_into(out, 10, counts[2] + (1 if opt else 0))
    return bytes(out)
