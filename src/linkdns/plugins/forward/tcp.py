"""TCP (and DNS over TLS) to one upstream: a FIFO pool of idle connections, one query at a time
on each connection (as CoreDNS's persistent connections).

Idle connections are closed after ``expire`` (and after ``max_age`` since they were opened,
when set); at most ``max_idle_conns`` stay idle (0 = no limit). A reused connection that the
upstream closed before answering is retried once on a fresh connection; a fresh connection
that fails is the upstream failing.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import TYPE_CHECKING

from linkdns import wire
from linkdns.errors import UpstreamError
from linkdns.plugins.forward import transport as tr

if TYPE_CHECKING:
    from linkdns.plugins.forward.upstream import Upstream

DIAL_WEIGHT = 4  # CoreDNS cumulativeAvgWeight


class TcpConn(asyncio.Protocol):
    def __init__(self, pool: TcpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pending: tr.Pending | None = None
        self.qid = -1
        self.closed = False
        self.created = self.last = pool.up.now()
        self.local = "?"
        #: set once the transport is gone (a TLS close takes a few loop turns)
        self.gone = asyncio.Event()
        pool.live.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.local = tr.sockname(transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for frame in wire.split_frames(self.buf):
            self._frame(frame)

    def _frame(self, frame: bytes) -> None:
        p = self.pending
        if p is None:
            return  # nothing asked: a stray frame
        if len(frame) >= 2 and ((frame[0] << 8) | frame[1]) == self.qid:
            st = tr.classify(frame, p.q)
            if type(st) is bytes:
                if st is not frame:
                    self.pool.up.stats.scrubbed += 1
                p.resolve(st)
                return
            if st == tr.IGNORE:
                return
        elif len(frame) >= 12 and tr.parses(frame):
            return  # another ID: ignored
        self.pool.up.stats.malformed += 1
        p.fail(UpstreamError(f"read tcp {self.local}->{self.pool.up.addr}: "
                             "dns: malformed reply"))
        self.close()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gone.set()
        self.pool.live.discard(self)
        p = self.pending
        if p is not None:
            why = "EOF" if exc is None else (getattr(exc, "strerror", None) or str(exc)).lower()
            p.fail(tr.ClosedByPeer(f"read tcp {self.local}->{self.pool.up.addr}: {why}"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def __repr__(self) -> str:
        return f"<TcpConn {self.local}->{self.pool.up.addr} closed={self.closed}>"


class TcpPool:
    def __init__(self, up: Upstream, tls: ssl.SSLContext | None, server_name: str) -> None:
        self.up = up
        self.tls = tls
        self.server_name = server_name or up.host.partition("%")[0]
        self.proto = "tcp-tls" if tls is not None else "tcp"
        self.idle: deque[TcpConn] = deque()
        #: every connection not yet lost (idle or busy), so stop can wait for their closes
        self.live: set[TcpConn] = set()
        self.avg_dial = up.cfg.max_dial_timeout / 2

    def _fresh(self, c: TcpConn, now: float) -> bool:
        cfg = self.up.cfg
        if c.closed or now - c.last > cfg.expire:
            return False
        return not (cfg.max_age and now - c.created > cfg.max_age)

    def take(self) -> TcpConn | None:
        now = self.up.now()
        while self.idle:
            c = self.idle.popleft()
            if self._fresh(c, now):
                return c
            c.close()
        return None

    def give(self, c: TcpConn) -> None:
        if c.closed:
            return
        limit = self.up.cfg.max_idle_conns
        if limit and len(self.idle) >= limit:
            c.close()
            return
        self.idle.append(c)

    def dial_timeout(self) -> float:
        cfg = self.up.cfg
        rt = self.avg_dial
        if rt < cfg.min_dial_timeout:
            return cfg.min_dial_timeout
        return 2 * rt if rt < cfg.max_dial_timeout / 2 else cfg.max_dial_timeout

    async def dial(self, timeout: float) -> TcpConn:
        loop = asyncio.get_running_loop()
        up = self.up
        t0 = loop.time()
        net = "tcp"
        try:
            async with asyncio.timeout(min(timeout, self.dial_timeout())):
                _, c = await loop.create_connection(
                    lambda: TcpConn(self), up.host, up.port, ssl=self.tls,
                    server_hostname=self.server_name if self.tls is not None else None)
        except TimeoutError:
            raise UpstreamError(f"dial {net} {up.addr}: i/o timeout") from None
        except ssl.SSLError as e:
            raise UpstreamError(f"dial {net} {up.addr}: tls: {e.reason or e}") from None
        except OSError as e:
            why = (e.strerror or str(e)).lower()
            raise UpstreamError(f"dial {net} {up.addr}: connect: {why}") from None
        self.avg_dial += (loop.time() - t0 - self.avg_dial) / DIAL_WEIGHT
        return c

    async def exchange(self, query: bytes, q: tr.Question, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        c = self.take()
        cached = c is not None
        self.up.count_conn(cached, self.proto)
        if c is None:
            c = await self.dial(timeout)
        try:
            return await self._once(c, query, q, deadline)
        except tr.ClosedByPeer:
            if not cached:
                raise
        # The upstream closed a reused connection: once more, on a fresh one.
        self.up.count_conn(False, self.proto)
        c = await self.dial(max(deadline - loop.time(), 0.001))
        return await self._once(c, query, q, deadline)

    async def _once(self, c: TcpConn, query: bytes, q: tr.Question, deadline: float) -> bytes:
        loop = asyncio.get_running_loop()
        t = c.transport
        if c.closed or t is None or t.is_closing():
            raise tr.ClosedByPeer(f"write tcp {c.local}->{self.up.addr}: broken pipe")
        qid = tr.new_id()
        p = tr.Pending(loop.create_future(), q)
        c.qid, c.pending = qid, p
        ok = False
        try:
            t.write(len(query).to_bytes(2, "big") + qid.to_bytes(2, "big") + query[2:])
            tr.arm(loop, p, max(deadline - loop.time(), 0.0),
                   lambda: f"read tcp {c.local}->{self.up.addr}: i/o timeout")
            reply = await p.fut
            ok = True
            return reply
        finally:
            tr.disarm(p)
            c.pending, c.qid = None, -1
            if ok:
                c.last = self.up.now()
                self.give(c)
            else:
                c.close()

    def sweep(self, now: float) -> None:
        keep: deque[TcpConn] = deque()
        for c in self.idle:
            if self._fresh(c, now):
                keep.append(c)
            else:
                c.close()
        self.idle = keep

    def close(self) -> None:
        while self.idle:
            self.idle.popleft().close()

    async def wait_closed(self, timeout: float = 1.0) -> None:
        """Close every connection and wait (bounded) until their transports are gone."""
        conns = [c for c in self.live if c.transport is not None]
        for c in conns:
            c.close()
        if conns:
            waits = [asyncio.ensure_future(c.gone.wait()) for c in conns]
            _, late = await asyncio.wait(waits, timeout=timeout)
            for t in late:
                t.cancel()
