"""Listeners: one UDP socket and one TCP server per (address, port), routing to sites by zone.

The UDP ``datagram_received`` holds the hit path: header and question scan (wire.scan_query),
longest-suffix zone routing on the lowercased wire name, the cache's synchronous ``hit`` and
one ``sendto``; no task, no dnslib. Everything else becomes one task running the site's chain.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from linkdns import wire
from linkdns.plugin import Handler
from linkdns.request import Request
from linkdns.server.stats import ZoneStats, size_bucket
from linkdns.server.tcp import TCPProtocol, tcp_limit
from linkdns.writer import UDPWriter, Writer

if TYPE_CHECKING:
    from linkdns.server.core import Server
    from linkdns.server.site import HitCache, Site

log = logging.getLogger("linkdns.server")

_perf = time.perf_counter

#: slow-path queries in flight per listener (unbound's num-queries-per-thread): a UDP query
#: over it is dropped and counted (reason ``flood``), a TCP one answered REFUSED
MAX_INFLIGHT = 1024
MEMO_MAX = 8192  # scanned queries remembered per listener (cleared when full)
#: the "hit once already" filter in front of the memo (see Listener.fresh): its size in bits,
#: and how many shapes it takes in before it starts afresh (false positives stay under 2%)
SEEN_BITS = 1 << 20
SEEN_MAX = 16384


class Route:
    """A zone of a site, as the router sees it."""

    __slots__ = ("site", "stats", "zone")

    def __init__(self, site: Site, zone: str, stats: ZoneStats) -> None:
        self.site = site
        self.zone = zone
        self.stats = stats


class Memo:
    """What the hit path needs about one query shape (the datagram minus its ID)."""

    __slots__ = ("cache", "do", "q", "qbucket", "qsize", "rewrites", "rkey", "route", "stats",
                 "udp_size")

    def __init__(self, q: wire.Query, r: Route) -> None:
        self.q = q
        self.route = r
        self.stats = r.stats
        site = r.site
        self.cache: HitCache | None = site.cache if site.fast else None
        size = q.udp_size
        for h in site.pre_hit:  # size hooks are pure: apply them once per shape
            size = h.hit_size(size)
        self.udp_size = size
        self.rewrites = tuple(h for h in site.pre_hit
                              if type(h).hit_rewrite is not Handler.hit_rewrite)
        self.rkey = q.qtype << 2
        self.do = q.do
        self.qsize = len(q.data)
        self.qbucket = size_bucket(self.qsize)


class Listener:
    """UDP + TCP on one (address, port), shared by every site bound there."""

    def __init__(self, server: Server, host: str, port: int) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.routes: dict[bytes, Route] = {}
        #: scan memo: datagram minus ID -> (Query, Route); see scan()
        self.memo: dict[bytes, Memo] = {}
        #: shapes that were a cache hit once, a bit per hash (memoized on their second hit)
        self.seen = bytearray(SEEN_BITS >> 3)
        self.seen_count = 0
        self.root: Route | None = None
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.Server | None = None
        self.tcp_conns: set[TCPProtocol] = set()
        self.tcp_max = tcp_limit()
        self.accepting = True
        #: slow-path queries being worked on (``linkdns_queries_in_flight``) and their cap
        self.inflight = 0
        self.max_inflight = server.max_inflight
        #: ``dns://ADDR:PORT``, the ``server`` label (set again once the port is bound)
        self.name = self._name()

    def _name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"dns://{host}:{self.port}"

    def set_sites(self, sites: list[Site]) -> None:
        """(Re)build the zone map. Called at start and by reload (an atomic swap)."""
        routes: dict[bytes, Route] = {}
        for site in sites:
            for zone in site.zones:
                zs = self.server.stats.zone(self.name, zone)
                routes[wire.text_to_name(zone)] = Route(site, zone, zs)
        self.routes = routes
        self.root = routes.get(b"\x00")
        self.forget()

    def forget(self) -> None:
        """Drop the memo and the filter in front of it."""
        self.memo.clear()
        self.seen = bytearray(SEEN_BITS >> 3)
        self.seen_count = 0

    def route(self, q: wire.Query) -> Route | None:
        """Longest matching zone for the query's name."""
        routes = self.routes
        if len(routes) == 1 and self.root is not None:
            return self.root
        name = q.key[: q.qname_end - wire.HEADER_LEN]
        for off in q.labels:
            r = routes.get(name[off:])
            if r is not None:
                return r
        return self.root

    async def start(self, reuse_port: bool) -> None:
        loop = asyncio.get_running_loop()
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        host = self.host or ("::" if fam == socket.AF_INET6 else "0.0.0.0")
        for attempt in range(20):
            usock = socket.socket(fam, socket.SOCK_DGRAM)
            tsock = socket.socket(fam, socket.SOCK_STREAM)
            try:
                for s in (usock, tsock):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if reuse_port:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    if fam == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                usock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                usock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                usock.bind((host, self.port))
                port = usock.getsockname()[1]
                tsock.bind((host, port))
            except OSError:
                usock.close()
                tsock.close()
                if self.port == 0 and attempt < 19:
                    continue  # ephemeral UDP port taken for TCP: pick another
                raise
            self.port = port
            self.name = self._name()
            break
        tsock.listen(1024)
        usock.setblocking(False)
        tsock.setblocking(False)
        self.udp, _ = await loop.create_datagram_endpoint(
            lambda: UDPProtocol(self), sock=usock)
        self.tcp = await loop.create_server(lambda: TCPProtocol(self), sock=tsock)

    def stop_accepting(self) -> None:
        """Stop taking new queries: close the TCP listening socket, stop reading UDP."""
        self.accepting = False
        if self.tcp is not None:
            self.tcp.close()
        if self.udp is not None:
            try:
                self.udp.pause_reading()  # type: ignore[attr-defined]
            except (AttributeError, NotImplementedError, RuntimeError):
                pass

    def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
        for c in list(self.tcp_conns):
            c.close()

    # -- the query path ---------------------------------------------------------------------

    def dropped(self, data: bytes, q: wire.Query | None, tcp: bool, v6: bool,
                reply: bytes | None = None, rc: int = 0) -> None:
        """Count a query no chain sees under CoreDNS's ``dropped`` pseudo-zone (type, proto,
        family, sizes); ``reply`` is the error answer sent with rcode ``rc`` (None: none)."""
        zs = self.server.stats.zone(self.name, "dropped")
        qtype = q.qtype if q is not None else 0
        zs.count_request(qtype, tcp, v6, q is not None and q.do, len(data))
        if reply is not None:
            zs.count_response(rc, "", tcp, len(reply), 0.0)

    def make_room(self) -> bool:
        """At the TCP connection limit: close the connection idle the longest (no query of
        its in flight) so a new client is served; False when every one has work in flight."""
        idle = [c for c in self.tcp_conns if c.pending == 0]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.last)
        if oldest.buf:
            self.drop("tcp_limit")  # its unfinished frame is lost
        self.tcp_conns.discard(oldest)
        oldest.close()
        return True

    def drop(self, reason: str) -> None:
        """Count a query received here and not answered (``linkdns_dropped_queries_total``)."""
        self.server.stats.drop(self.name, reason)

    def panic(self, data: bytes, peer: Any, tcp: bool) -> bytes | None:
        """An exception escaped the listener's own path (the chain has its own guard in
        Server.handle): count it in ``coredns_panics_total``, log it once with the query and
        return the SERVFAIL to send (None if ``data`` is no query to answer)."""
        self.server.stats.panics += 1
        try:
            st, q = wire.scan_query(data)
            what = (repr(Request(q, peer, "tcp" if tcp else "udp", self.name))
                    if q is not None else data[:64].hex())
            log.exception("panic while serving %s", what)
            return wire.error_reply(q, data, wire.SERVFAIL) if q is not None and st >= 0 else None
        except Exception:
            log.exception("panic while serving %s, and again answering it", data[:64].hex())
            return None

    def preflight(
        self, data: bytes, peer: Any, tcp: bool
    ) -> tuple[wire.Query | None, Route | None, bytes | None]:
        """Checks before the chain: (query, route, error reply). Error reply None + query None
        means drop silently."""
        st, q = wire.scan_query(data)
        if st:
            if st < 0:
                self.dropped(data, None, tcp, len(peer) > 2)
                self.drop("malformed")
                return None, None, None
            err = wire.error_reply(q, data, st)
            self.dropped(data, q, tcp, len(peer) > 2, err, st)
            return None, None, err
        assert q is not None
        r = self.route(q)
        if r is None:
            err = wire.error_reply(q, data, wire.REFUSED)
            self.dropped(data, q, tcp, len(peer) > 2, err, wire.REFUSED)
            return None, None, err
        return q, r, None

    def hit(self, m: Memo, size: int, tcp: bool, v6: bool, t0: float) -> bytearray | None:
        """The synchronous cache-hit path: a reply ready to send, or None.

        ``m.q`` is a memoized Query lent for this call only (see :meth:`scan`)."""
        cache = m.cache
        if cache is None:
            return None
        reply = cache.hit(m.q, size)
        if reply is None:
            return None
        for h in m.rewrites:
            h.hit_rewrite(reply)
        m.stats.count_hit(m.rkey | tcp << 1 | v6, m.do, m.qbucket, m.qsize, len(reply),
                          reply[3] & 0xF, tcp, _perf() - t0)
        return reply

    def fresh(self, data: bytes, peer: Any, tcp: bool, v6: bool, t0: float
              ) -> tuple[bytes | bytearray | None, wire.Query | None, Route | None]:
        """A query whose shape the memo does not know: preflight, then the cache.

        Returns ``(reply, None, None)`` when answered here (an error reply or a cache hit),
        ``(None, None, None)`` when dropped silently, ``(None, q, r)`` for the slow path (the
        caller owns ``q``). A shape is remembered once it was a cache hit twice: the memo
        then answers the next identical datagram (any ID) with the scan worked out here.
        Misses never pay for it, and neither do names asked once (an ``ndots`` search
        storm, a one-off lookup): the first hit only sets a bit in ``seen``, a filter of
        shape hashes that starts afresh every SEEN_MAX shapes, so a shape is memoized when
        it is hit twice within that window (a collision only memoizes a shape early)."""
        q, r, err = self.preflight(data, peer, tcp)
        if q is None or r is None:
            return err, None, None
        if r.site.fast:
            m = Memo(q, r)
            reply = self.hit(m, 65535 if tcp else m.udp_size, tcp, v6, t0)
            if reply is not None:
                shape = data[2:]
                h = hash(shape) & (SEEN_BITS - 1)
                byte, bit = h >> 3, 1 << (h & 7)
                seen = self.seen
                if not seen[byte] & bit:
                    self.seen_count += 1
                    if self.seen_count > SEEN_MAX:
                        self.seen = seen = bytearray(SEEN_BITS >> 3)
                        self.seen_count = 1
                    seen[byte] |= bit
                    return reply, None, None
                if len(self.memo) >= MEMO_MAX:
                    self.forget()
                self.memo[shape] = m  # q belongs to the memo from now on
                return reply, None, None
        return None, q, r

    def slow(self, q: wire.Query, r: Route, peer: Any, w_factory: Any, tcp: bool,
             v6: bool) -> None:
        """Run the chain for ``q`` (owned by the caller: not a memoized Query) in a task.

        A UDP query over the in-flight cap is dropped here and counted (``flood``): no task,
        no memory; the client retries after its timeout, as with unbound. TCP callers check
        the cap first (see TCPProtocol.query)."""
        if self.inflight >= self.max_inflight:
            self.dropped(q.data, q, tcp, v6)
            self.drop("flood")
            return
        self.inflight += 1
        req = Request(q, peer, "tcp" if tcp else "udp", self.name, r.zone)
        w: Writer = w_factory(req)
        r.stats.count_request(q.qtype, tcp, v6, q.do, len(q.data))
        self.server.spawn(self.server.handle(r, req, w, self))


class UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        t0 = _perf()
        ln = self.listener
        try:
            # The hit path, inlined: memo lookup, cache hit, sendto, count. Nothing else.
            m = ln.memo.get(data[2:])
            if m is not None and ln.accepting:
                q = m.q
                q.data = data
                if m.cache is not None:
                    reply = m.cache.hit(q, m.udp_size)
                    if reply is not None:
                        for h in m.rewrites:
                            h.hit_rewrite(reply)
                        self.transport.sendto(reply, addr)  # type: ignore[union-attr]
                        m.stats.count_hit(m.rkey | (len(addr) > 2), m.do, m.qbucket, m.qsize,
                                          len(reply), reply[3] & 0xF, False, _perf() - t0)
                        return
                transport = self.transport
                ln.slow(q.copy(data), m.route, addr, lambda req: UDPWriter(req, transport),  # type: ignore[arg-type]
                        False, len(addr) > 2)
                return
            v6 = len(addr) > 2
            if not ln.accepting:
                ln.dropped(data, None, False, v6)
                ln.drop("shutdown")
                return
            out, fq, r = ln.fresh(data, addr, False, v6, t0)
            if out is not None:
                self.transport.sendto(out, addr)  # type: ignore[union-attr]
            elif fq is not None and r is not None:
                transport = self.transport
                ln.slow(fq, r, addr, lambda req: UDPWriter(req, transport), False, v6)  # type: ignore[arg-type]
        except Exception:  # a bug on the hit path: SERVFAIL, counted, logged, still serving
            err = ln.panic(data, addr, False)
            if err is not None:
                self.transport.sendto(err, addr)  # type: ignore[union-attr]

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)
