"""Sans-IO DNS wire helpers: header checks, question and OPT scan, error replies, names.

Nothing here imports dnslib: these functions run on the hot path (cache hits) and must stay
cheap. Offsets are byte offsets into the message; names are in wire form (length-prefixed
labels). See RFC 1035 §4.1 and RFC 6891 §6.
"""

from __future__ import annotations

import struct
from typing import Final

from linkdns.errors import WireError

HEADER_LEN: Final = 12

# Header flag bits (second 16-bit word).
QR: Final = 0x8000
OPCODE_MASK: Final = 0x7800
AA: Final = 0x0400
TC: Final = 0x0200
RD: Final = 0x0100
RA: Final = 0x0080
AD: Final = 0x0020
CD: Final = 0x0010
RCODE_MASK: Final = 0x000F

# Rcodes.
NOERROR: Final = 0
FORMERR: Final = 1
SERVFAIL: Final = 2
NXDOMAIN: Final = 3
NOTIMP: Final = 4
REFUSED: Final = 5
BADVERS: Final = 16

RCODE_NAMES: Final = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 16: "BADVERS",
    23: "BADCOOKIE",
}

# Types and classes we care about.
T_A: Final = 1
T_NS: Final = 2
T_CNAME: Final = 5
T_SOA: Final = 6
T_PTR: Final = 12
T_MX: Final = 15
T_TXT: Final = 16
T_AAAA: Final = 28
T_SRV: Final = 33
T_OPT: Final = 41
T_SIG: Final = 24
T_TSIG: Final = 250
T_IXFR: Final = 251
T_AXFR: Final = 252
T_ANY: Final = 255
C_IN: Final = 1

OPT_COOKIE: Final = 10

_U16 = struct.Struct(">H")
_RR_FIXED = struct.Struct(">HHIH")  # type, class, ttl, rdlength
_HEADER = struct.Struct(">HHHHHH")

MIN_UDP: Final = 512
#: the cache key's last byte: DO 1, CD 2, and SIGNED when the query's additional record is a
#: TSIG or a SIG(0): such a query is forwarded unchanged (RFC 8945 §5.5) and its
#: reply is never cached, so it never meets an unsigned query's entry
SIGNED: Final = 4


class Query:
    """What the server needs to know about a query, scanned from its bytes without dnslib.

    ``qname_end`` is the offset just past the name; ``q_end`` just past qtype/qclass.
    ``key`` is the cache key: lowercased name wire + qtype/qclass + one byte for DO/CD (and
    ``SIGNED``).
    """

    __slots__ = (
        "cd", "cookie", "data", "do", "edns_version", "flags", "has_opt", "key", "labels",
        "q_end", "qclass", "qname_end", "qtype", "udp_size",
    )

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.flags = 0
        self.qname_end = 0
        self.q_end = 0
        self.qtype = 0
        self.qclass = 0
        self.labels: list[int] = []
        self.key = b""
        self.has_opt = False
        self.udp_size = MIN_UDP
        self.do = False
        self.cd = False
        self.edns_version = 0
        self.cookie = b""

    def copy(self, data: bytes | None = None) -> Query:
        """A new Query with the same scan results (for ``data``, a query that differs only in
        its ID). The hit path lends out memoized Query objects; whoever keeps one copies it."""
        c = Query.__new__(Query)
        c.data = self.data if data is None else data
        c.cd, c.cookie, c.do, c.edns_version = self.cd, self.cookie, self.do, self.edns_version
        c.flags, c.has_opt, c.key, c.labels = self.flags, self.has_opt, self.key, self.labels
        c.q_end, c.qclass, c.qname_end = self.q_end, self.qclass, self.qname_end
        c.qtype, c.udp_size = self.qtype, self.udp_size
        return c

    @property
    def id(self) -> int:
        return (self.data[0] << 8) | self.data[1]

    @property
    def qname_wire(self) -> bytes:
        """The name as the client wrote it (letter case kept)."""
        return self.data[HEADER_LEN : self.qname_end]

    @property
    def qname_lower(self) -> bytes:
        return self.key[: self.qname_end - HEADER_LEN]

    @property
    def question(self) -> bytes:
        return self.data[HEADER_LEN : self.q_end]

    @property
    def name(self) -> str:
        """Lowercase dotted FQDN (``example.org.``, ``.`` for the root)."""
        return name_to_text(self.qname_lower)



def scan_query(data: bytes) -> tuple[int, Query | None]:
    """Check a query's header, question and OPT.

    Returns ``(status, query)``: status -1 means "drop silently" (unreadable or a response),
    0 means OK, otherwise the rcode to answer with (NOTIMP, FORMERR, REFUSED, BADVERS). With
    an rcode, the query is returned with what could be read (its question when ``q_end`` is
    set, its OPT when ``has_opt``), for an error reply that echoes them (``error_reply``).
    """
    n = len(data)
    if n < HEADER_LEN:
        return -1, None
    flags = (data[2] << 8) | data[3]
    if flags & QR:
        return -1, None
    q = Query(data)
    q.flags = flags
    qd, an, ns, ar = (data[4] << 8) | data[5], data[6:8], data[8:10], (data[10] << 8) | data[11]
    if flags & OPCODE_MASK:
        # Not a QUERY: NOTIMP, with the question and OPT when they read as a query's would.
        if qd == 1 and an == ns == b"\x00\x00" and ar <= 1:
            _scan_body(q, data, ar)
        return NOTIMP, q
    if qd != 1 or an != b"\x00\x00" or ns != b"\x00\x00" or ar > 1:
        return FORMERR, q
    st = _scan_body(q, data, ar)
    if st:
        return st, q
    q.key = data[HEADER_LEN : q.qname_end].lower() + data[q.qname_end : q.q_end] + bytes(
        ((1 if q.do else 0) | (2 if q.cd else 0) | (
            SIGNED if ar and not q.has_opt and _signed(data, q.q_end) else 0),))
    if q.qclass != C_IN:
        return REFUSED, q
    return 0, q


def _signed(data: bytes, off: int) -> bool:
    """Is the additional record at ``off`` (read by ``_scan_opt`` already) a TSIG or SIG(0)?"""
    rtype = _U16.unpack_from(data, skip_name(data, off))[0]
    return rtype in (T_TSIG, T_SIG)


def _scan_body(q: Query, data: bytes, ar: int) -> int:
    """Read the question (plain labels only: no compression pointer in a query's only name)
    and the OPT of ``q``; 0 or the rcode to answer with. Its name loop is a speed copy of
    ``skip_name`` that also records the label offsets (tests/test_name_walkers.py)."""
    n = len(data)
    off = HEADER_LEN
    labels = q.labels
    while True:
        if off >= n:
            return FORMERR
        ln = data[off]
        if ln == 0:
            off += 1
            break
        if ln > 63:
            return FORMERR
        labels.append(off - HEADER_LEN)
        off += ln + 1
    if off - HEADER_LEN > 255 or off + 4 > n:
        return FORMERR
    q.qname_end = off
    q.qtype = (data[off] << 8) | data[off + 1]
    q.qclass = (data[off + 2] << 8) | data[off + 3]
    off += 4
    q.q_end = off
    q.cd = bool(q.flags & CD)
    if ar:
        return _scan_opt(q, data, off)
    return FORMERR if off != n else 0


def _scan_opt(q: Query, data: bytes, off: int) -> int:
    """Read the single additional record; only an OPT is understood (others are ignored)."""
    n = len(data)
    try:
        end_name = skip_name(data, off)
    except WireError:
        return FORMERR
    if end_name + 10 > n:
        return FORMERR
    rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, end_name)
    rd = end_name + 10
    if rd + rdlen != n:
        return FORMERR
    if rtype != T_OPT:
        return 0
    if end_name != off + 1:  # OPT owner must be the root
        return FORMERR
    q.has_opt = True
    q.udp_size = rclass if rclass > MIN_UDP else MIN_UDP
    q.edns_version = (ttl >> 16) & 0xFF
    q.do = bool(ttl & 0x8000)
    # Options: keep a COOKIE to echo.
    p = rd
    while p + 4 <= rd + rdlen:
        code, olen = _U16.unpack_from(data, p)[0], _U16.unpack_from(data, p + 2)[0]
        if p + 4 + olen > rd + rdlen:
            return FORMERR
        if code == OPT_COOKIE:
            # RFC 7873 §5.2.2: a client cookie alone (8 bytes) or with a server cookie
            # (16 to 40 bytes in all); any other length is FORMERR (and is not echoed).
            if olen != 8 and not 16 <= olen <= 40:
                return FORMERR
            q.cookie = data[p : p + 4 + olen]
        p += 4 + olen
    if p != rd + rdlen:
        return FORMERR  # an option header cut short
    if q.edns_version != 0:
        return BADVERS
    return 0


def same_question(reply: bytes, lname: bytes, tail: bytes) -> bool:
    """True when ``reply``'s (first) question is ``lname``, a lowercased wire name, in any case
    (RFC 4343: a 0x20-mixed echo still matches) followed by ``tail`` (its qtype and qclass)
    exactly. The one question match of a query and its reply (the request's and forward's)."""
    end = HEADER_LEN + len(lname)
    return (len(reply) >= end + 4 and reply[HEADER_LEN:end].lower() == lname
            and reply[end:end + 4] == tail)


def skip_name(buf: bytes | bytearray, off: int) -> int:
    """Offset just past the (possibly compressed) name starting at ``off``.

    The reference name walker, bounded: a compression pointer ends the name and is not
    followed (so no pointer loop), the labels in place take at most 254 bytes (a name is at
    most 255 with its root: RFC 1035 §3.1, which bounds it to 127 labels), and a name that
    runs past the end or has a bad label type raises WireError. The walkers that do not call
    it are speed copies pinned against it by tests/test_name_walkers.py: wire's question scan,
    the cache's ``store.name_end``, forward's ``transport.parses`` and ``scrub.read_name``.
    """
    n = len(buf)
    start = off
    while True:
        if off >= n:
            raise WireError("name runs past the end of the message")
        ln = buf[off]
        if ln == 0:
            if off - start > 254:
                raise WireError("name longer than 255 bytes")
            return off + 1
        if ln & 0xC0 == 0xC0:
            if off - start > 254:
                raise WireError("name longer than 255 bytes")
            if off + 2 > n:
                raise WireError("truncated compression pointer")
            return off + 2
        if ln & 0xC0:
            raise WireError("bad label type")
        off += ln + 1


def rcode(buf: bytes | bytearray) -> int:
    return buf[3] & 0x0F


def make_opt(udp_size: int, do: bool, options: bytes = b"", ext_rcode: int = 0) -> bytes:
    """An OPT pseudo-RR (version 0)."""
    ttl = (ext_rcode << 24) | (0x8000 if do else 0)
    return b"\x00" + _RR_FIXED.pack(T_OPT, udp_size, ttl, len(options)) + options


_OPT_CACHE: dict[tuple[int, bool], bytes] = {}


def reply_opt(q: Query) -> bytes:
    """The OPT a reply to ``q`` carries: the client's size, its DO bit, its COOKIE echoed."""
    if q.cookie:
        return make_opt(q.udp_size, q.do, q.cookie)
    k = (q.udp_size, q.do)
    opt = _OPT_CACHE.get(k)
    if opt is None:
        opt = make_opt(q.udp_size, q.do)
        if len(_OPT_CACHE) < 256:
            _OPT_CACHE[k] = opt
    return opt


def error_reply(q: Query | None, data: bytes, rc: int, ra: bool = True,
                options: bytes = b"") -> bytes:
    """A reply with rcode ``rc`` to the query in ``data``: the client's ID and opcode, its
    question and an OPT (its size and DO, its COOKIE echoed) when they were read (CoreDNS and
    unbound do so). For a QUERY, RD and CD are copied and RA set (``ra``), as in every other
    reply linkdns sends; those bits are only defined for QUERY (RFC 1035 §4.1.1), so a reply
    to another opcode (NOTIMP) has them clear. ``options``: EDNS options put in that OPT after
    the client's COOKIE (e.g. an Extended DNS Error); nothing for a client that sent no OPT."""
    flags = (data[2] << 8 | data[3]) if len(data) >= 4 else 0
    out_flags = QR | (flags & OPCODE_MASK)
    if not flags & OPCODE_MASK:
        out_flags |= (flags & (RD | CD)) | (RA if ra else 0)
    qid = data[0:2] if len(data) >= 2 else b"\x00\x00"
    ext = rc >> 4
    opt = make_opt(q.udp_size, q.do, q.cookie + options, ext) if (
        q is not None and q.has_opt) else b""
    if q is None or q.q_end == 0:
        head = _HEADER.pack(0, out_flags | (rc & 0x0F), 0, 0, 0, 1 if opt else 0)
        return qid + head[2:] + opt
    head = qid + _HEADER.pack(0, out_flags | (rc & 0x0F), 1, 0, 0, 1 if opt else 0)[2:]
    return head + data[HEADER_LEN : q.q_end] + opt


def split_frames(buf: bytearray) -> list[bytes]:
    """Take every complete 2-byte-length-prefixed message (RFC 7766 framing) off the front
    of ``buf``; a partial one stays for the next read."""
    out: list[bytes] = []
    while len(buf) >= 2:
        n = (buf[0] << 8) | buf[1]
        if len(buf) < 2 + n:
            break
        out.append(bytes(buf[2 : 2 + n]))
        del buf[: 2 + n]
    return out


def name_to_text(wire: bytes) -> str:
    """Dotted lowercase-as-given text of an uncompressed wire name (``.`` for root)."""
    parts: list[str] = []
    off = 0
    while off < len(wire):
        ln = wire[off]
        if ln == 0:
            break
        parts.append(wire[off + 1 : off + 1 + ln].decode("ascii", "backslashreplace"))
        off += ln + 1
    return ".".join(parts) + "." if parts else "."


def text_to_name(text: str) -> bytes:
    """Wire form of a dotted name (lowercased). Raises WireError for bad labels."""
    text = text.strip().lower()
    if text in ("", "."):
        return b"\x00"
    out = bytearray()
    for label in text.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not raw or len(raw) > 63:
            raise WireError(f"bad label in {text!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise WireError(f"name too long: {text!r}")
    return bytes(out)


def make_query(qname: bytes, qtype: int, qid: int, rd: bool = True, opt: bytes = b"",
               cd: bool = False) -> bytes:
    """A query message for a wire-form name."""
    flags = (RD if rd else 0) | (CD if cd else 0)
    return (
        _HEADER.pack(qid, flags, 1, 0, 0, 1 if opt else 0)
        + qname
        + _U16.pack(qtype)
        + _U16.pack(C_IN)
        + opt
    )
