"""The front door: a query's zone (routing) and the cache-hit path, read in place.

A listener routes a query to the server block of its longest zone (:class:`Router`), and
answers a cache hit from the datagram's own bytes (:func:`hit_wire`): the header checked in
place, the question's end taken from the datagram's length (no OPT, or an OPT without options
seen before) or one ``find``, the cache key built from those bytes, the client's OPT looked up
in a small bounded table of shapes, the cache's own index the only table a hit looks in (see
docs/plugins/cache.md). ``UDPProtocol.datagram_received`` (server/udp.py) inlines
:func:`hit_wire`; the TCP path and tests call it. Everything else goes to the listener's slow
path (server/listen.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from linkdns import wire

if TYPE_CHECKING:
    from linkdns.plugin import HitCache
    from linkdns.server.site import Site
    from linkdns.server.stats import ZoneStats

_perf = time.perf_counter


class Route:
    """A zone of a site, as the router sees it, with what a cache hit needs from the site:
    its cache (None when the site cannot answer hits synchronously), the size hooks and
    reply rewrites of the plugins in front of the cache."""

    __slots__ = ("cache", "rewrites", "site", "sizers", "stats", "zone")

    def __init__(self, site: Site, zone: str, stats: ZoneStats) -> None:
        self.site = site
        self.zone = zone
        self.stats = stats
        self.cache: HitCache | None = site.cache if site.fast else None
        self.sizers = tuple(h for h in site.pre_hit if h.hit_sizes)
        self.rewrites = tuple(h for h in site.pre_hit if h.hit_rewrites)



class Router:
    """The zone map of one listener: a wire name -> the Route of its longest zone.

    Changed in place by :meth:`set` (at start and by reload, on the loop, so no query sees a
    half-made map). A Listener is the Router of its address (server/listen.py)."""

    __slots__ = ("only", "root", "routes", "suffixes")

    def __init__(self) -> None:
        self.routes: dict[bytes, Route] = {}
        #: the zones other than the root, wire form (a name that ends in none of them is the
        #: root's); the only route when it is the root's (no name to look at)
        self.suffixes: tuple[bytes, ...] = ()
        self.only: Route | None = None
        self.root: Route | None = None

    def set(self, routes: dict[bytes, Route]) -> None:
        """Route by ``routes`` (zone in wire form -> Route) from now on."""
        self.routes = routes
        self.root = routes.get(b"\x00")
        self.suffixes = tuple(z for z in routes if z != b"\x00")
        self.only = self.root if len(routes) == 1 else None

    def route_name(self, name: bytes) -> Route | None:
        """Longest matching zone for a lowercased wire name (None: no zone, REFUSED)."""
        if not name.endswith(self.suffixes):  # one C call: most names are the root's
            return self.root
        routes = self.routes
        off = 0
        n = len(name)  # (the hit path's name is unchecked: stay inside it, whatever it holds)
        while off < n:
            r = routes.get(name[off:])
            if r is not None:
                return r
            off += name[off] + 1
        return None


#: header bytes 4-11 (QD=1, AN=NS=0, AR=0 or 1) of a query the hit path reads in place
COUNTS_PLAIN = b"\x00\x01\x00\x00\x00\x00\x00\x00"
COUNTS_OPT = b"\x00\x01\x00\x00\x00\x00\x00\x01"
#: the cache key's last byte (wire.scan_query): DO | CD << 1
KEY_FLAG = (b"\x00", b"\x01", b"\x02", b"\x03")
#: client OPT records (every byte after the question) seen on the hit path -> (UDP size, DO,
#: the OPT our reply carries). A handful of shapes in practice (Go: 1232; systemd-resolved:
#: its MTU with DO and RFC 6975 options; dig...); the first OPTS_MAX are kept, the rest are
#: read every time (never cleared, so nothing to thrash). OPTs with a COOKIE are not kept
#: (one per client): those queries take the scanning path.
OPTS_MAX = 256
OPTS: dict[bytes, tuple[int, int, bytes]] = {}
NO_OPT = (wire.MIN_UDP, 0, b"")


def opt_shape(raw: bytes) -> tuple[int, int, bytes] | None:
    """(UDP size, DO, our reply's OPT) for the bytes after a query's question when they are
    exactly one well-formed OPT (root owner, version 0, options that fit, no COOKIE); None
    otherwise (the scanning path decides: FORMERR, BADVERS, a cookie to echo, a TSIG...)."""
    shape = OPTS.get(raw)
    if shape is not None:
        return shape
    n = len(raw)
    if n < 11 or raw[0] or raw[1:3] != b"\x00\x29" or raw[6]:
        return None
    if 11 + ((raw[9] << 8) | raw[10]) != n:
        return None
    p = 11
    while p < n:
        if p + 4 > n:
            return None
        if raw[p:p + 2] == b"\x00\x0a":  # COOKIE
            return None
        p += 4 + ((raw[p + 2] << 8) | raw[p + 3])
    if p != n:
        return None
    size = (raw[3] << 8) | raw[4]
    size = size if size > wire.MIN_UDP else wire.MIN_UDP
    do = 1 if raw[7] & 0x80 else 0
    shape = (size, do, wire.make_opt(size, bool(do)))
    if len(OPTS) < OPTS_MAX:
        OPTS[raw] = shape
    return shape


SIZED_OPTS: dict[tuple[int, int, bytes], bytes] = {}


def sized_opt(size: int, do: int, cookie: bytes = b"") -> bytes:
    """Our reply's OPT for a client whose size a plugin lowered to ``size`` (bufsize)."""
    k = (size, do, cookie)
    opt = SIZED_OPTS.get(k)
    if opt is None:
        opt = wire.make_opt(size, bool(do), cookie)
        if len(SIZED_OPTS) < OPTS_MAX and not cookie:
            SIZED_OPTS[k] = opt
    return opt


def hit_wire(router: Router, data: bytes, tcp: bool, v6: bool,
             t0: float) -> bytes | bytearray | None:
    """The hit path: a reply from the cache for ``data``, read in place, or None (not a
    hit, or not a query this path reads: ``Listener.scanning_path`` decides).

    Reads the header (QR=0, opcode QUERY, QD=1, AN=NS=0, AR=0 or one OPT) and takes the
    question to end where the datagram ends (no OPT) or where its last 11 bytes, an OPT
    without options seen before, start; otherwise it finds the end of the name with one
    ``find`` of its zero byte. The key is the name lowercased (``bytes.lower`` only
    touches A-Z, never a label length: those are <= 63), the raw type and class, and the
    DO/CD byte, as ``wire.scan_query`` builds it. None of this is checked further, and
    need not be: a key that matches a stored one has a well-formed name of that length
    (label lengths are not changed by lowering), so the datagram is exactly a query for
    it with that OPT; a datagram that is anything else cannot match and is a miss here
    (the scanning path then answers it, errors included)."""
    n = len(data)
    if n < 17 or data[2] & 0xF8:  # QR, opcode
        return None
    counts = data[4:12]
    shape: tuple[int, int, bytes] | None
    if counts == COUNTS_OPT:
        shape = OPTS.get(data[n - 11 :])  # an OPT without options: no search
        if shape is not None:
            qe = n - 11
            z = qe - 5
        else:
            z = data.find(0, 12)
            qe = z + 5
            raw = data[qe:]
            shape = OPTS.get(raw) or opt_shape(raw)
    elif counts == COUNTS_PLAIN:
        qe = n
        z = n - 5
        shape = NO_OPT
    else:
        shape = None
    if shape is None or z < 12:
        return None
    size, flag, opt = shape
    if data[3] & 0x10:  # CD
        flag |= 2
    name = data[12 : z + 1].lower()
    r = router.only or router.route_name(name)
    if r is None:
        return None
    cache = r.cache
    if cache is None:
        return None
    if r.sizers:
        for h in r.sizers:
            size = h.hit_size(size)
        if opt:
            opt = sized_opt(size, flag & 1)
    reply: bytes | bytearray | None = cache.hit_wire(
        name + data[z + 1 : qe] + KEY_FLAG[flag], data, qe, opt, 65535 if tcp else size)
    if reply is None:
        return None
    if r.rewrites:
        reply = rewritten(r, reply)
    r.stats.count_hit((data[z + 1], data[z + 2], tcp, v6, flag, n, len(reply), reply[3]),
                      _perf() - t0)
    return reply

def rewritten(r: Route, reply: bytes | bytearray) -> bytearray:
    """``reply`` as the block's hit rewrites leave it (loadbalance shuffles records in place)."""
    mutable = bytearray(reply)
    for h in r.rewrites:
        h.hit_rewrite(mutable)
    return mutable


def hit_scanned(q: wire.Query, r: Route, tcp: bool, v6: bool,
                t0: float) -> bytes | bytearray | None:
    """The hit path for a query it could not read in place (a COOKIE, say), scanned."""
    cache = r.cache
    if cache is None:
        return None
    size = q.udp_size
    opt = wire.reply_opt(q) if q.has_opt else b""
    if r.sizers:
        for h in r.sizers:
            size = h.hit_size(size)
        if opt:
            opt = sized_opt(size, q.do, q.cookie)
    reply: bytes | bytearray | None = cache.hit_wire(q.key, q.data, q.q_end, opt,
                                                     65535 if tcp else size)
    if reply is None:
        return None
    if r.rewrites:
        reply = rewritten(r, reply)
    r.stats.count_hit((q.qtype >> 8, q.qtype & 0xFF, tcp, v6, int(q.do), len(q.data),
                       len(reply), reply[3]), _perf() - t0)
    return reply
