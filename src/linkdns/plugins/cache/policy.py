"""What may be stored, for how long, and how a stored entry is rendered on the slow path.

Classification follows CoreDNS's ``response.Typify`` with the stricter RFC 2308 reading the
issue asks for: NXDOMAIN needs an SOA in authority and no answers. Everything here works on
wire bytes (``replies.walk``); dnslib is not needed to store a reply.
"""

from __future__ import annotations

import struct

from linkdns import replies, wire
from linkdns.errors import WireError
from linkdns.plugins.cache.store import DENIAL, SERVFAIL, SUCCESS, Entry, Popular
from linkdns.wire import Query, reply_opt

DEFAULT_TTL = 5  # CoreDNS MinimalDefaultTTL: a reply without records
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def classify(flags: int, rrs: list[replies.RR]) -> int | None:
    """SUCCESS, DENIAL, SERVFAIL or None (never cached) for a reply without OPT."""
    if flags & wire.TC:
        return None
    rc = flags & wire.RCODE_MASK
    answers = False
    soa = False
    for r in rrs:
        if r.section == 0:
            answers = True
        elif r.section == 1 and r.rtype == wire.T_SOA:
            soa = True
    if rc == wire.NOERROR:
        if answers:
            return SUCCESS
        return DENIAL if soa else SUCCESS  # NODATA; else delegation / empty NOERROR
    if rc == wire.NXDOMAIN:
        return DENIAL if soa and not answers else None
    if rc in (wire.SERVFAIL, wire.NOTIMP):
        return SERVFAIL
    return None


def min_ttl(rrs: list[replies.RR]) -> int:
    """The lowest TTL of all records (the OPT was stripped already); 5 s if there are none."""
    if not rrs:
        return DEFAULT_TTL
    return min([r.ttl for r in rrs])


def denial_ttl(body: bytes, rrs: list[replies.RR]) -> int:
    """The TTL of a denial (NXDOMAIN, NODATA): the lowest TTL of its records, where the
    SOA's counts as min(SOA TTL, SOA MINIMUM) (RFC 2308 §5, as unbound; CoreDNS takes the
    SOA's own TTL only). The cache's ``denial`` floor and cap apply after this."""
    ttl = min_ttl(rrs)
    for r in rrs:
        if r.section == 1 and r.rtype == wire.T_SOA and r.rdlen >= 22:
            minimum = _U32.unpack_from(body, r.end - 4)[0]
            if minimum < ttl:
                ttl = minimum
    return ttl


class Parsed:
    """A reply ready to become an entry: body without OPT, its records and its kind."""

    __slots__ = ("body", "kind", "rrs")

    def __init__(self, body: bytes, rrs: list[replies.RR], kind: int) -> None:
        self.body = body
        self.rrs = rrs
        self.kind = kind


def parse_reply(q: Query, reply: bytes) -> Parsed | None:
    """Walk a reply that matches ``q``; None when it is malformed or must not be cached."""
    if q.qtype in (wire.T_AXFR, wire.T_IXFR) or q.key[-1] & wire.SIGNED:
        return None  # a zone transfer, or the answer to a signed (TSIG, SIG(0)) query
    try:
        _, all_rrs = replies.walk(reply)
    except WireError:
        return None
    opts = [r for r in all_rrs if r.rtype == wire.T_OPT and r.section == 2]
    for r in opts:
        if r.ttl >> 24:
            return None  # extended rcode (BADVERS, BADCOOKIE...): not a cacheable answer
    body, rrs = reply, all_rrs
    if len(opts) == 1 and opts[0] is all_rrs[-1]:  # the usual place: drop the tail
        ar = ((reply[10] << 8) | reply[11]) - 1
        body = reply[:10] + _U16.pack(ar) + reply[12 : opts[0].start]
        rrs = all_rrs[:-1]
    elif opts:
        body = replies.strip_opt(reply)
        _, rrs = replies.walk(body)
    kind = classify((body[2] << 8) | body[3], rrs)
    if kind is None:
        return None
    return Parsed(body, rrs, kind)


def make_entry(q: Query, p: Parsed, ttl: int, now: float, aa_policy: str,
               popular: bool = False) -> Entry:
    """Freeze a parsed reply: TTL offsets, flags per policy (the entry keeps the records; a
    reply is rebuilt around the client's own ID and question). ``popular``: a
    :class:`Popular` entry, for a cache that prefetches."""
    upstream_aa = bool(p.body[2] & 0x04)
    aa = upstream_aa if aa_policy == "keep" else aa_policy == "set"
    ad = bool(p.body[3] & 0x20)
    return (Popular if popular else Entry)(p.body, tuple([r.rdata - 6 for r in p.rrs]), now,
                                           ttl, p.kind, aa, ad, q.cd, q.do)


def render(e: Entry, q: Query, ttl: int) -> bytes:
    """The slow path's rendering of an entry for ``q`` with ``ttl`` on every record.

    Deliberately written apart from the hit path (struct per offset, flags from the query,
    the lowercased question from the key, ``replies.finish_reply`` for ID, question case and
    OPT) so tests can compare the two.
    """
    rest = bytearray(e.rest)
    for off in e.offsets:
        _U32.pack_into(rest, off, ttl)
    qf = q.flags
    flags = wire.QR | wire.RA | (qf & (wire.RD | wire.CD)) | e.rcode
    if e.aa:
        flags |= wire.AA
    if e.ad and (q.do or qf & wire.AD):
        flags |= wire.AD
    counts = bytes(e.head.plain[2:])  # QD, AN, NS, AR (without OPT)
    question = q.key[: q.q_end - wire.HEADER_LEN]
    return replies.finish_reply(q, _U16.pack(0) + _U16.pack(flags) + counts + question + rest)


#: the OPT of a reply without a cookie, by the client's UDP size (without / with DO)
OPT_MEMO: dict[int, bytes] = {}
OPT_MEMO_DO: dict[int, bytes] = {}


def memo_opt(q: Query) -> bytes:
    opt = reply_opt(q)
    memo = OPT_MEMO_DO if q.do else OPT_MEMO
    if len(memo) < 256:
        memo[q.udp_size] = opt
    return opt


def assemble(e: Entry, q: Query, opt: bytes) -> bytes:
    """The reply to ``q`` from ``e``'s template (its TTLs as they are now) and ``opt``.

    The first answer to a miss is built the way ``Cache.hit_wire`` builds a hit (which
    inlines this body): the client's ID, the entry's header bytes for this client's RD and AD
    bits (with or without our OPT counted), the client's question as it wrote it, the
    entry's records, the OPT (``b""`` for a client without EDNS). ``render`` is the
    independent reference."""
    data = q.data
    return b"".join((data[:2], e.head.variants[(4 if opt else 0) | (data[2] & 1)
                                               | (data[3] >> 4 & 2)],
                     data[12 : q.q_end], e.rest, opt))


def client_opt(q: Query) -> bytes:
    """The OPT a reply to ``q`` carries (``b""`` without EDNS), memoized without a cookie."""
    if not q.has_opt:
        return b""
    if q.cookie:
        return reply_opt(q)
    try:
        return (OPT_MEMO_DO if q.do else OPT_MEMO)[q.udp_size]
    except KeyError:
        return memo_opt(q)


def passthrough(reply: bytes, q: Query, aa_policy: str) -> bytes:
    """A reply that is not stored, with the AA policy and the AD rule applied."""
    if len(reply) < 4:
        return reply
    b2, b3 = reply[2], reply[3]
    n2 = b2 | 0x04 if aa_policy == "set" else b2 & ~0x04 if aa_policy == "clear" else b2
    n3 = b3 if (q.do or q.flags & wire.AD) else b3 & ~0x20
    if n2 == b2 and n3 == b3:
        return reply
    return reply[:2] + bytes((n2, n3)) + reply[4:]
