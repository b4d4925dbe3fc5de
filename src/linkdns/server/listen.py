"""Listeners: one UDP socket and one TCP server per (address, port), shared by the server
blocks bound there.

A Listener owns its sockets (server/sockets.py binds them), its zone map (a
:class:`~linkdns.server.frontdoor.Router`) and what happens to a query the hit path did not
answer (server/frontdoor.py): the checks before the chain and the cache once more for a
query the hit path could not read in place (:meth:`Listener.scanning_path`), then one task
running the block's chain (:meth:`Listener.slow_path`), within the in-flight cap. The
protocols that read the sockets are server/udp.py and server/tcp.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from linkdns import wire
from linkdns.request import Request
from linkdns.server import frontdoor
from linkdns.server.frontdoor import Route, Router
from linkdns.server.sockets import TCP_BACKLOG, UDPOut, bind_pair, inherited_pair, server_label
from linkdns.server.stats import ServerStats
from linkdns.writer import Writer

if TYPE_CHECKING:
    from linkdns.server.site import Site

#: runs one query's chain (Server.handle): the route, the request, its writer, the listener
Handle = Callable[[Route, Request, Writer, "Listener"], Coroutine[Any, Any, None]]
#: starts a task the server owns (Server.spawn)
Spawn = Callable[[Coroutine[Any, Any, Any]], Any]


class Conn(Protocol):
    """A TCP connection as the listener and the drain see it (server/tcp.py)."""

    #: queries of it in flight, when it last read or wrote, the unfinished frame read
    pending: int
    last: float
    buf: bytearray

    def idle_for(self, now: float) -> float: ...

    def close(self) -> None: ...

log = logging.getLogger("linkdns.server")

#: slow-path queries in flight per listener (unbound's num-queries-per-thread): a UDP query
#: over it is dropped and counted (reason ``flood``), a TCP one answered REFUSED
MAX_INFLIGHT = 1024
TCP_DRAIN_IDLE = 0.5  # at stop, a connection closes once idle this long (server/lifecycle.py)

class Listener(Router):
    """UDP + TCP on one (address, port), shared by every site bound there; routes by zone as
    the Router it is (the hit path reads ``ln.only`` and ``ln.route_name`` straight off the
    listener: no extra attribute on the hottest line)."""

    def __init__(self, stats: ServerStats, spawn: Spawn, handle: Handle, host: str, port: int,
                 max_inflight: int, tcp_max: int) -> None:
        self.stats = stats
        self.spawn = spawn
        self.handle = handle
        self.host = host
        self.port = port
        super().__init__()
        self.udp: asyncio.DatagramTransport | None = None
        #: what slow-path UDP answers go through (see UDPOut)
        self.out: UDPOut | None = None
        self.tcp: asyncio.Server | None = None
        self.tcp_conns: set[Conn] = set()
        self.tcp_max = tcp_max
        self.accepting = True
        #: slow-path queries being worked on (``linkdns_queries_in_flight``) and their cap
        self.inflight = 0
        self.max_inflight = max_inflight
        #: ``dns://ADDR:PORT``, the ``server`` label (set again once the port is bound)
        self.name = self._name()

    def _name(self) -> str:
        return server_label(self.host, self.port)


    def set_sites(self, sites: list[Site]) -> None:
        """(Re)build the zone map. Called at start and by reload (an atomic swap)."""
        routes: dict[bytes, Route] = {}
        for site in sites:
            for zone in site.zones:
                zs = self.stats.zone(self.name, zone)
                routes[wire.text_to_name(zone)] = Route(site, zone, zs)
        self.set(routes)

    async def start(self, reuse_port: bool, inherited: list[socket.socket] | None,
                    udp: Callable[[], asyncio.DatagramProtocol],
                    tcp: Callable[[], asyncio.Protocol]) -> None:
        """Bind UDP and TCP, or serve ``inherited`` sockets (a predecessor's, hand-over), with
        the protocols ``udp`` and ``tcp`` make (server/udp.py, server/tcp.py)."""
        if inherited:
            usock, tsock = inherited_pair(inherited, self.name)
        else:
            usock, tsock = bind_pair(self.host, self.port, reuse_port)
        self.port = usock.getsockname()[1]
        self.name = self._name()
        loop = asyncio.get_running_loop()
        usock.setblocking(False)
        tsock.setblocking(False)
        self.udp, _ = await loop.create_datagram_endpoint(udp, sock=usock)
        # backlog: create_server listens again (100 by default); keep sockets.TCP_BACKLOG
        self.tcp = await loop.create_server(tcp, sock=tsock, backlog=TCP_BACKLOG)

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
        zs = self.stats.zone(self.name, "dropped")
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
        self.stats.drop(self.name, reason)

    def panic(self, data: bytes, peer: Any, tcp: bool) -> bytes | None:
        """An exception escaped the listener's own path (the chain has its own guard in
        Server.handle): count it in ``coredns_panics_total``, log it once with the query and
        return the SERVFAIL to send (None if ``data`` is no query to answer)."""
        self.stats.panics += 1
        try:
            st, q = wire.scan_query(data)
            what = (repr(Request(q, peer, "tcp" if tcp else "udp", self.name))
                    if q is not None else data[:64].hex())
            log.exception("panic while serving %s", what)
            return wire.error_reply(q, data, wire.SERVFAIL) if q is not None and st >= 0 else None
        except Exception:
            log.exception("panic while serving %s, and again answering it", data[:64].hex())
            return None

    def hit_wire(self, data: bytes, tcp: bool, v6: bool, t0: float) -> bytes | bytearray | None:
        """The hit path for ``data`` (see :func:`frontdoor.hit_wire`)."""
        return frontdoor.hit_wire(self, data, tcp, v6, t0)

    def scanning_path(self, data: bytes, peer: Any, tcp: bool, v6: bool, t0: float,
              looked: bool = False) -> tuple[bytes | bytearray | None, wire.Query | None,
                                             Route | None]:
        """A query the hit path did not answer: the checks before the chain (scan, route),
        then the cache once more if the hit path could not read it in place (``looked``: it
        could, and the key was not there: the usual miss looks it up once). One call layer
        per miss: scan and route are inline.

        Returns ``(reply, None, None)`` when answered here (an error reply or a cache hit),
        ``(None, None, None)`` when dropped silently, ``(None, q, r)`` for the slow path."""
        st, q = wire.scan_query(data)
        if st:
            if st < 0:
                self.dropped(data, None, tcp, len(peer) > 2)
                self.drop("malformed")
                return None, None, None
            err = wire.error_reply(q, data, st)
            self.dropped(data, q, tcp, len(peer) > 2, err, st)
            return err, None, None
        assert q is not None
        r = self.only  # Router.route_name, unless the address has one block of the root
        if r is None:
            r = self.route_name(q.qname_lower)
            if r is None:
                err = wire.error_reply(q, data, wire.REFUSED)
                self.dropped(data, q, tcp, len(peer) > 2, err, wire.REFUSED)
                return err, None, None
        if r.cache is not None and not looked:
            reply = frontdoor.hit_scanned(q, r, tcp, v6, t0)
            if reply is not None:
                return reply, None, None
        return None, q, r

    def slow_path(self, q: wire.Query, r: Route, peer: Any, w_factory: Any, tcp: bool,
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
        self.spawn(self.handle(r, req, w, self))
