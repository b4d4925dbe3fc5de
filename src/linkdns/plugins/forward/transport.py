"""What the UDP and TCP transports share: the expected question, reply validation, timers.

A reply is accepted for an in-flight query only when it comes from the upstream's address
(connected sockets: the kernel filters), carries the query's random ID, has QR=1, walks as a
DNS message and has exactly one question, equal to ours (name compared case-insensitively, type
and class exactly).

With the right ID from the right address, a reply that is not a readable response with one
question (cut short, QR=0, QDCOUNT 65535, bytes that do not walk; QDCOUNT 0 unless it is a bare
error reply, see ``_bare_error``) is "malformed": that attempt failed at once (as unbound, which turns such a reply into an immediate timeout of that
server). A well-formed reply with one question that is not ours is a spoof attempt or a stale
reply: it is ignored and the attempt keeps waiting for the real one (as unbound does).

An accepted reply is scrubbed (``scrub``) in the same walk that checks it: what the upstream
had no business sending never reaches the cache or the client.
"""

from __future__ import annotations

import asyncio
import os
from array import array
from collections.abc import Callable
from typing import Final

from linkdns import replies, wire
from linkdns.errors import UpstreamError, WireError
from linkdns.plugins.forward.scrub import T_TSIG, scrub

#: unused random query IDs, refilled 256 at a time from the OS CSPRNG (one getrandom call
#: per 256 queries instead of one per query) by ``refill``; the UDP path pops from it directly
ids: list[int] = []

IGNORE: Final = 1
MALFORMED: Final = 2


class Question:
    """The question a reply must carry: lowercased name wire + qtype/qclass bytes.

    ``any_reply`` (health probes, as CoreDNS's): any response with the right ID will do.
    ``zone``: the forward's FROM zone (wire), the bailiwick of additional addresses for the
    answer's targets (see ``scrub``).
    """

    __slots__ = ("any_reply", "lname", "qtype", "tail", "zone")

    def __init__(self, lname: bytes, tail: bytes, any_reply: bool = False,
                 zone: bytes = b"\x00") -> None:
        self.lname = lname
        self.tail = tail
        self.qtype = (tail[0] << 8) | tail[1]
        self.any_reply = any_reply
        self.zone = zone

    @classmethod
    def of(cls, q: wire.Query, zone: bytes = b"\x00") -> Question:
        return cls(q.qname_lower, q.data[q.qname_end : q.q_end], False, zone)


class ClosedByPeer(UpstreamError):
    """The upstream closed the (TCP) connection before answering."""


#: no query ID is handed out twice within this many (per process): an ID drawn again within
#: the window is skipped (a stale or late reply can then never carry a live query's ID; the
#: window costs 0.1 bit of the 16)
ID_WINDOW: Final = 4096


class _IdWindow:
    """The last ``ID_WINDOW`` IDs handed out, as a ring and a 64 KiB presence table: 72 KiB
    in all (a deque and a set of int objects took ~0.3 MiB, counted against the cache's RSS
    target)."""

    __slots__ = ("filled", "in_window", "next", "ring")

    def __init__(self) -> None:
        self.ring = array("H", bytes(2 * ID_WINDOW))
        self.in_window = bytearray(1 << 16)
        self.filled = 0
        self.next = 0


_window = _IdWindow()


def new_id() -> int:
    """A random 16-bit query ID (os.urandom, as SystemRandom, but read 256 at a time)."""
    if not ids:
        refill()
    return ids.pop()


def refill() -> None:
    """Put 256 fresh IDs in ``ids``: random, none among the last ``ID_WINDOW`` handed out
    (``ids`` is empty when this runs, so every ID made before was handed out already)."""
    w = _window
    ring, seen = w.ring, w.in_window
    batch: list[int] = []
    while len(batch) < 256:
        for i in memoryview(os.urandom(512)).cast("H"):
            if seen[i]:
                continue
            if w.filled == ID_WINDOW:
                seen[ring[w.next]] = 0
            else:
                w.filled += 1
            ring[w.next] = i
            seen[i] = 1
            w.next = (w.next + 1) % ID_WINDOW
            batch.append(i)
            if len(batch) == 256:
                break
    batch.reverse()  # handed out from the end: in the order they were drawn
    ids.extend(batch)


def classify(data: bytes, q: Question) -> bytes | int:
    """The reply to accept (``data`` itself, or scrubbed: see ``scrub``), IGNORE (another
    question: not an answer to ``q``) or MALFORMED (our ID, but not a readable response with
    one question). The caller matched the ID already."""
    if len(data) < wire.HEADER_LEN:
        return MALFORMED
    if q.any_reply:
        return data if data[2] & 0x80 else IGNORE
    if not data[2] & 0x80:
        return MALFORMED
    if data[4:6] != b"\x00\x01":
        return data if _bare_error(data) else MALFORMED
    clean = scrub(data, q.lname, q.qtype, q.zone)
    if clean is None:
        return MALFORMED
    if not wire.same_question(data, q.lname, q.tail):
        return IGNORE  # one readable question, not ours: keep waiting for the real reply
    return clean


def _bare_error(data: bytes) -> bool:
    """An error reply without a question (QDCOUNT 0, an rcode other than NOERROR/NXDOMAIN, no
    answer or authority, only an OPT or TSIG in additional): e.g. nsd's NOTAUTH/BADKEY to a
    TSIG it does not know, or a FORMERR. Accepted and relayed as it is (unbound accepts a
    reply without a question too); anything else without one question is malformed."""
    if data[4:10] != b"\x00" * 6 or data[3] & 0x0F in (wire.NOERROR, wire.NXDOMAIN):
        return False
    try:
        _, rrs = replies.walk(data)
    except WireError:
        return False
    return all(r.rtype in (wire.T_OPT, T_TSIG) for r in rrs)


def with_question(reply: bytes, q: wire.Query) -> bytes:
    """A bare error reply with ``q``'s question put in (clients check it), unless it ends in a
    TSIG: a forwarder passes a signed exchange on unchanged (RFC 8945 §5.5)."""
    try:
        _, rrs = replies.walk(reply)
    except WireError:
        return reply
    if rrs and rrs[-1].rtype == T_TSIG:
        return reply
    return reply[:4] + b"\x00\x01" + reply[6:12] + q.question + reply[12:]


def parses(data: bytes) -> bool:
    """True when ``data`` reads as a DNS message at all: exactly what ``replies.walk`` accepts
    (names within bounds, record headers and data within bounds, nothing after the last
    record), checked without building the record list (the cache walks a reply it stores).
    A speed copy of ``replies.walk`` and its ``wire.skip_name``, inlined (one call less per
    name on every miss): tests/test_name_walkers.py fails when they drift apart."""
    n = len(data)
    if n < wire.HEADER_LEN:
        return False
    qd = (data[4] << 8) | data[5]
    total = qd + ((data[6] << 8) | data[7]) + ((data[8] << 8) | data[9]) + (
        (data[10] << 8) | data[11])
    off = wire.HEADER_LEN
    for i in range(total):
        start = off
        while True:  # skip a name (a compression pointer ends it)
            if off >= n:
                return False
            ln = data[off]
            if ln == 0:
                if off - start > 254:
                    return False
                off += 1
                break
            if ln & 0xC0 == 0xC0:
                if off + 2 > n or off - start > 254:
                    return False
                off += 2
                break
            if ln & 0xC0:
                return False
            off += ln + 1
        if i < qd:
            off += 4  # type, class (bounds: checked by the next name or the end)
        else:
            if off + 10 > n:
                return False
            off += 10 + ((data[off + 8] << 8) | data[off + 9])
            if off > n:
                return False
    return off == n


class Pending:
    """One query waiting on a transport: its question and the future its reply resolves."""

    __slots__ = ("fut", "q", "timer")

    def __init__(self, fut: asyncio.Future[bytes], q: Question) -> None:
        self.fut = fut
        self.q = q
        self.timer: asyncio.TimerHandle | None = None

    def resolve(self, data: bytes) -> None:
        if not self.fut.done():
            self.fut.set_result(data)

    def fail(self, err: BaseException) -> None:
        if not self.fut.done():
            self.fut.set_exception(err)


def arm(loop: asyncio.AbstractEventLoop, p: Pending, timeout: float,
        msg: Callable[[], str]) -> None:
    """Fail ``p`` with ``msg()`` (an i/o timeout text) after ``timeout`` seconds."""
    p.timer = loop.call_later(timeout, lambda: p.fail(UpstreamError(msg())))


def disarm(p: Pending) -> None:
    if p.timer is not None:
        p.timer.cancel()
        p.timer = None


def sockname(transport: asyncio.BaseTransport) -> str:
    name = transport.get_extra_info("sockname")
    if not name:
        return "?"
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
