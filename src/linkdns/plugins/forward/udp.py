"""UDP to one upstream: a small rotating pool of connected sockets, each with an in-flight map.

Why not one long-lived socket: every query would leave from the same source port, and an
off-path attacker would only have to guess the 16-bit ID. Why not a socket per query (CoreDNS
dials one, from a pool): that costs a socket, an endpoint and a close per miss.

So each upstream keeps up to ``POOL_SIZE`` connected UDP sockets; each gets a kernel-chosen
(randomised on Linux) ephemeral port and serves at most ``MAX_USES`` queries before it is
retired (closed once its last in-flight query finished) and replaced by a fresh socket on a
new port. Queries on a socket are told apart by a random ID unique among its in-flight
queries. Connected sockets make the kernel drop datagrams from any other address or port, and
report ICMP port-unreachable as an error, so a dead upstream fails fast. Idle sockets are
closed after ``expire``.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

from linkdns.errors import UpstreamError
from linkdns.plugins.forward import transport as tr

if TYPE_CHECKING:
    from linkdns.plugins.forward.upstream import Upstream

POOL_SIZE = 4
MAX_USES = 64


class UdpSock(asyncio.DatagramProtocol):
    def __init__(self, pool: UdpPool) -> None:
        self.pool = pool
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tr.Pending] = {}
        self.uses = 0
        self.last = 0.0
        self.retired = False
        self.local = "?"
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def open(self) -> None:
        up = self.pool.up
        loop = asyncio.get_running_loop()
        sock = socket.socket(up.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(up.sockaddr)
            await loop.create_datagram_endpoint(lambda: self, sock=sock)
        except OSError as e:
            sock.close()
            err = UpstreamError(f"dial udp {up.addr}: {e.strerror or e}")
            self.opened.set_exception(err)
            self.opened.exception()  # retrieved: waiters re-raise it
            raise err from None
        self.opened.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.local = tr.sockname(transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        p = self.pending.get((data[0] << 8) | data[1]) if len(data) >= 2 else None
        if p is None:
            if len(data) < 12 or not tr.parses(data):
                # Junk from the upstream's own address that names no query of ours: the
                # upstream is broken; fail what waits here rather than run into timeouts.
                self._fail_all(f"read udp {self.local}->{self.pool.up.addr}: "
                               "dns: malformed reply")
            return
        st = tr.classify(data, p.q)
        if st == tr.ACCEPT:
            p.resolve(data)
        elif st == tr.MALFORMED:
            p.fail(UpstreamError(f"read udp {self.local}->{self.pool.up.addr}: "
                                 "dns: malformed reply"))

    def error_received(self, exc: Exception) -> None:
        reason = getattr(exc, "strerror", None) or str(exc)
        self._fail_all(f"read udp {self.local}->{self.pool.up.addr}: read: {reason.lower()}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.retired = True
        self._fail_all(f"read udp {self.local}->{self.pool.up.addr}: "
                       "use of closed network connection")

    def _fail_all(self, msg: str) -> None:
        self.pool.retire(self)
        for p in list(self.pending.values()):
            p.fail(UpstreamError(msg))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def __repr__(self) -> str:
        return (f"<UdpSock {self.local}->{self.pool.up.addr} uses={self.uses} "
                f"inflight={len(self.pending)} retired={self.retired}>")


class UdpPool:
    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.active: list[UdpSock] = []
        self.rr = 0

    async def get(self) -> tuple[UdpSock, bool]:
        """A socket to send on, and whether it was reused (a conn cache hit)."""
        if len(self.active) < POOL_SIZE:
            s = UdpSock(self)
            self.active.append(s)
            try:
                await s.open()
            except UpstreamError:
                self.retire(s)
                raise
            return s, False
        s = self.active[self.rr % len(self.active)]
        self.rr += 1
        if not s.opened.done():
            await asyncio.shield(s.opened)
        return s, True

    def retire(self, s: UdpSock) -> None:
        """Stop handing ``s`` out; it closes once its in-flight queries are done."""
        s.retired = True
        try:
            self.active.remove(s)
        except ValueError:
            pass
        if not s.pending:
            s.close()

    async def exchange(self, query: bytes, q: tr.Question, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        s, cached = await self.get()
        self.up.count_conn(cached, "udp")
        qid = tr.new_id()
        while qid in s.pending:
            qid = tr.new_id()
        p = tr.Pending(loop.create_future(), q)
        s.pending[qid] = p
        s.uses += 1
        s.last = self.up.now()
        if s.uses >= MAX_USES:
            self.retire(s)  # stays open until this query is done
        t = s.transport
        try:
            if t is None or t.is_closing():
                raise UpstreamError(f"write udp {s.local}->{self.up.addr}: "
                                    "use of closed network connection")
            t.sendto(qid.to_bytes(2, "big") + query[2:])
            tr.arm(loop, p, timeout, lambda: f"read udp {s.local}->{self.up.addr}: i/o timeout")
            return await p.fut
        finally:
            tr.disarm(p)
            s.pending.pop(qid, None)
            if s.retired and not s.pending:
                s.close()

    def sweep(self, now: float, expire: float) -> None:
        """Close sockets idle for longer than ``expire``."""
        for s in list(self.active):
            if not s.pending and s.opened.done() and now - s.last > expire:
                self.retire(s)

    def close(self) -> None:
        for s in list(self.active):
            self.retire(s)
            s.close()
