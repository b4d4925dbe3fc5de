"""Listeners: one UDP socket and one TCP server per (address, port), routing to sites by zone.

The UDP ``datagram_received`` holds the hit path (:meth:`Listener.hit_wire`): the header and
the question read in place, the cache key built from the datagram's own bytes (the name
lowercased, type, class, DO/CD), longest-suffix zone routing on that name, the cache's
synchronous ``hit_wire`` and one ``sendto``; no task, no dnslib, no Query object, and nothing
remembered per query shape: the cache's own index is the only table a hit looks in, so the
hit path is as fast for 40k hot names as for ten (see docs/plugins/cache.md). Everything else
becomes one task running the site's chain.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from linkdns import wire
from linkdns.plugin import Handler
from linkdns.request import Request
from linkdns.server import hitpath
from linkdns.server.hitpath import (
    COUNTS_OPT,
    COUNTS_PLAIN,
    KEY_FLAG,
    NO_OPT,
    OPTS,
    opt_shape,
    sized_opt,
)
from linkdns.server.sockets import UDPOut, bind_pair, inherited_pair
from linkdns.server.stats import FIRST_TIME, ZoneStats
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
TCP_DRAIN_IDLE = 0.5  # at stop, a connection closes once idle this long (server/core.py)

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
        self.sizers = tuple(h for h in site.pre_hit
                            if type(h).hit_size is not Handler.hit_size)
        self.rewrites = tuple(h for h in site.pre_hit
                              if type(h).hit_rewrite is not Handler.hit_rewrite)


class Listener:
    """UDP + TCP on one (address, port), shared by every site bound there."""

    def __init__(self, server: Server, host: str, port: int) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.routes: dict[bytes, Route] = {}
        #: the zones other than the root, wire form (a name that ends in none of them is the
        #: root's); the only route when it is the root's (no name to look at)
        self.suffixes: tuple[bytes, ...] = ()
        self.only: Route | None = None
        self.root: Route | None = None
        self.udp: asyncio.DatagramTransport | None = None
        #: what slow-path UDP answers go through (see UDPOut)
        self.out: UDPOut | None = None
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
        self.suffixes = tuple(z for z in routes if z != b"\x00")
        self.only = self.root if len(routes) == 1 else None

    def route(self, q: wire.Query) -> Route | None:
        """Longest matching zone for the query's name."""
        if self.only is not None:
            return self.only
        return self.route_name(q.qname_lower)

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

    async def start(self, reuse_port: bool,
                    inherited: list[socket.socket] | None = None) -> None:
        """Bind UDP and TCP, or serve ``inherited`` sockets (a predecessor's, hand-over)."""
        if inherited:
            usock, tsock = inherited_pair(inherited, self.name)
        else:
            usock, tsock = bind_pair(self.host, self.port, reuse_port)
        self.port = usock.getsockname()[1]
        self.name = self._name()
        await self._serve(usock, tsock)

    async def _serve(self, usock: socket.socket, tsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        usock.setblocking(False)
        tsock.setblocking(False)
        self.udp, _ = await loop.create_datagram_endpoint(
            lambda: UDPProtocol(self), sock=usock)
        self.tcp = await loop.create_server(lambda: TCPProtocol(self), sock=tsock)

    def fds(self) -> list[int]:
        """The listening sockets' fds (UDP, TCP), for a successor."""
        out: list[int] = []
        if self.udp is not None and not self.udp.is_closing():
            out.append(self.udp.get_extra_info("socket").fileno())
        if self.tcp is not None and self.tcp.sockets:
            out.append(self.tcp.sockets[0].fileno())
        return out

    def stop_accepting(self) -> None:
        """Stop taking new queries: close the TCP listening socket, stop reading UDP.

        The UDP transport is closed (uvloop's cannot pause reading) once a duplicate of its
        socket is kept for the answers still in flight (:class:`UDPOut`). What the kernel
        queued stays in the socket for whoever else holds it: a successor after a hand-over
        (or nobody, and it goes when the process exits)."""
        self.accepting = False
        if self.tcp is not None:
            self.tcp.close()
        if self.udp is not None and self.out is not None and self.out.sock is None:
            fd = self.udp.get_extra_info("socket").fileno()
            dup = socket.socket(fileno=os.dup(fd))
            dup.setblocking(False)
            self.out.sock = dup
            self.udp.close()

    def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.out is not None and self.out.sock is not None:
            self.out.sock.close()
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

    def hit_wire(self, data: bytes, tcp: bool, v6: bool, t0: float) -> bytes | bytearray | None:
        """The hit path for ``data`` (see :func:`hitpath.hit_wire`)."""
        return hitpath.hit_wire(self, data, tcp, v6, t0)

    def fresh(self, data: bytes, peer: Any, tcp: bool, v6: bool, t0: float,
              looked: bool = False) -> tuple[bytes | bytearray | None, wire.Query | None,
                                             Route | None]:
        """A query the hit path did not answer: preflight, then the cache once more if the
        hit path could not read it in place (``looked``: it could, and the key was not
        there: the usual miss looks it up once).

        Returns ``(reply, None, None)`` when answered here (an error reply or a cache hit),
        ``(None, None, None)`` when dropped silently, ``(None, q, r)`` for the slow path."""
        q, r, err = self.preflight(data, peer, tcp)
        if q is None or r is None:
            return err, None, None
        if r.cache is not None and not looked:
            reply = hitpath.hit_scanned(q, r, tcp, v6, t0)
            if reply is not None:
                return reply, None, None
        return None, q, r

    def slow(self, q: wire.Query, r: Route, peer: Any, w_factory: Any, tcp: bool,
             v6: bool) -> None:
        """Run the chain for ``q`` (owned by the caller) in a task.

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
        self.out: UDPOut | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.out = self.listener.out = UDPOut(transport)  # type: ignore[arg-type]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        t0 = _perf()
        ln = self.listener
        try:
            v6 = len(addr) > 2
            # Listener.hit_wire, inlined (a call frame is ~5% of a hit; tests pin both to the
            # slow path's rendering).
            n = len(data)
            looked = False
            if n >= 17 and not data[2] & 0xF8 and ln.accepting:
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
                if shape is not None and z >= 12:
                    size, flag, opt = shape
                    if data[3] & 0x10:  # CD
                        flag |= 2
                    name = data[12 : z + 1].lower()
                    r = ln.only or ln.route_name(name)
                    if r is not None and r.cache is not None:
                        if r.sizers:
                            for h in r.sizers:
                                size = h.hit_size(size)
                            if opt:
                                opt = sized_opt(size, flag & 1)
                        reply: bytes | bytearray | None = r.cache.hit_wire(
                            name + data[z + 1 : qe] + KEY_FLAG[flag], data, qe, opt, size)
                        if reply is not None:
                            if r.rewrites:  # (loadbalance shuffles the records in place)
                                mutable = bytearray(reply)
                                for h in r.rewrites:
                                    h.hit_rewrite(mutable)
                                reply = mutable
                            self.transport.sendto(reply, addr)  # type: ignore[union-attr]
                            # ZoneStats.count_hit, inlined: one ledger entry, the duration
                            st = r.stats
                            sig = (data[z + 1], data[z + 2], False, v6, flag, n, len(reply),
                                   reply[3])
                            hits = st.hits
                            hits[sig] = hits.get(sig, 0) + 1
                            secs = _perf() - t0
                            d = st.duration
                            d.counts[0 if secs <= FIRST_TIME else bisect_left(d.bounds, secs)] += 1
                            d.sum += secs
                            return
                    looked = True
            if not ln.accepting:
                ln.dropped(data, None, False, v6)
                ln.drop("shutdown")
                return
            out, q, r = ln.fresh(data, addr, False, v6, t0, looked)
            if out is not None:
                self.transport.sendto(out, addr)  # type: ignore[union-attr]
            elif q is not None and r is not None:
                snd = self.out
                ln.slow(q, r, addr, lambda req: UDPWriter(req, snd), False, v6)  # type: ignore[arg-type]
        except Exception:  # a bug on the hit path: SERVFAIL, counted, logged, still serving
            err = ln.panic(data, addr, False)
            if err is not None:
                self.transport.sendto(err, addr)  # type: ignore[union-attr]

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)
