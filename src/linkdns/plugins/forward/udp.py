"""UDP to one upstream: a small rotating pool of connected sockets, each with an in-flight map.

Why not one long-lived socket: every query would leave from the same source port, and an
off-path attacker would only have to guess the 16-bit ID. Why not a socket per query (CoreDNS
dials one, from a pool): that costs a socket, an endpoint and a close per miss.

So each upstream keeps up to ``POOL_SIZE`` connected UDP sockets; each gets a kernel-chosen
(randomised on Linux) ephemeral port, not one of the last ``PORT_WINDOW`` sockets' ports, and
serves at most ``MAX_USES`` queries before it is retired (closed once its last in-flight query finished) and replaced by a fresh socket on a
new port. Queries on a socket are told apart by a random ID unique among its in-flight
queries. Connected sockets make the kernel drop datagrams from any other address or port, and
report ICMP port-unreachable as an error, so a dead upstream fails fast. Idle sockets are
closed after ``expire``.

The sockets are plain non-blocking sockets watched with ``loop.add_reader`` rather than
asyncio datagram endpoints: opening one is synchronous (no endpoint future to wait on, so no
query ever waits for a socket to open), a send is one ``send`` call, and a reply goes from
``recv`` to its waiting future with no transport or protocol layer in between.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import TYPE_CHECKING

from linkdns.errors import UpstreamError
from linkdns.plugins.forward import transport as tr

if TYPE_CHECKING:
    from linkdns.plugins.forward.upstream import Upstream

POOL_SIZE = 4
MAX_USES = 64
#: a source port is not used again within this many sockets opened (see ``_open``)
PORT_WINDOW = 64
#: the largest datagram we read (a reply can be as large as the client's EDNS size)
MAX_DATAGRAM = 65535
#: datagrams read per readiness callback at most (as libuv), so one busy socket can't starve
#: the loop; what is left is read on the next iteration (the poll is level-triggered)
READ_BATCH = 32


class UdpPending(tr.Pending):
    """An in-flight UDP query: its ID and socket (for the cleanup and the timeout message)."""

    __slots__ = ("qid", "sock")

    def __init__(self, fut: asyncio.Future[bytes], q: tr.Question, sock: UdpSock,
                 qid: int) -> None:
        self.fut = fut
        self.q = q
        self.timer: asyncio.TimerHandle | None = None
        self.sock = sock
        self.qid = qid

    def expire(self) -> None:
        """The read timeout fired."""
        self.timer = None
        if not self.fut.done():
            s = self.sock
            self.fut.set_exception(UpstreamError(
                f"read udp {s.local}->{s.pool.up.addr}: i/o timeout"))


class UdpSock:
    """One connected UDP socket and the queries in flight on it."""

    __slots__ = ("fd", "last", "local", "loop", "pending", "pool", "retired", "sock", "uses")

    def __init__(self, pool: UdpPool, loop: asyncio.AbstractEventLoop) -> None:
        up = pool.up
        self.pool = pool
        self.loop = loop
        self.pending: dict[int, UdpPending] = {}
        self.uses = 0
        self.last = 0.0
        self.retired = False
        sock = _open(up)
        try:
            self.local = _fmt(sock.getsockname())
            loop.add_reader(sock.fileno(), self._readable)
        except OSError as e:
            sock.close()
            raise UpstreamError(f"dial udp {up.addr}: {e.strerror or e}") from None
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()

    def _readable(self) -> None:
        for _ in range(READ_BATCH):
            sock = self.sock
            if sock is None:
                return
            try:
                data = sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # ICMP port unreachable and friends
                reason = (e.strerror or str(e)).lower()
                self.fail_all(f"read udp {self.local}->{self.pool.up.addr}: read: {reason}")
                return
            self.datagram_received(data)

    def datagram_received(self, data: bytes) -> None:
        p = self.pending.get((data[0] << 8) | data[1]) if len(data) >= 2 else None
        if p is None:
            if len(data) < 12 or not tr.parses(data):
                # Junk from the upstream's own address that names no query of ours: the
                # upstream is broken; fail what waits here rather than run into timeouts.
                self.pool.up.stats.malformed += 1
                self.fail_all(f"read udp {self.local}->{self.pool.up.addr}: "
                               "dns: malformed reply")
            return
        st = tr.classify(data, p.q)
        if type(st) is bytes:
            if not p.fut.done():
                if st is not data:
                    self.pool.up.stats.scrubbed += 1
                p.fut.set_result(st)
        elif st == tr.MALFORMED and not p.fut.done():
            self.pool.up.stats.malformed += 1
            p.fail(UpstreamError(f"read udp {self.local}->{self.pool.up.addr}: "
                                 "dns: malformed reply"))

    def fail_all(self, msg: str) -> None:
        self.pool.retire(self)
        for p in list(self.pending.values()):
            p.fail(UpstreamError(msg))

    def close(self) -> None:
        """Close the socket; queries still waiting on it fail."""
        sock = self.sock
        if sock is None:
            return
        self.sock = None
        self.retired = True
        self.pool.draining.discard(self)
        try:
            self.loop.remove_reader(self.fd)
        except RuntimeError:  # the loop is closed already
            pass
        sock.close()
        for p in list(self.pending.values()):
            p.fail(UpstreamError(f"read udp {self.local}->{self.pool.up.addr}: "
                                 "use of closed network connection"))

    def __repr__(self) -> str:
        return (f"<UdpSock {self.local}->{self.pool.up.addr} uses={self.uses} "
                f"inflight={len(self.pending)} retired={self.retired}>")


class UdpPool:
    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.active: list[UdpSock] = []
        #: retired sockets still waiting for their last in-flight queries
        self.draining: set[UdpSock] = set()
        self.rr = 0
        #: the running loop, set by the forward's start() (None: ask asyncio)
        self.loop: asyncio.AbstractEventLoop | None = None
        #: the connection cache [hits, misses] counters of UDP
        self.conn = up.stats.conn_for("udp")

    def get(self, loop: asyncio.AbstractEventLoop) -> tuple[UdpSock, bool]:
        """A socket to send on, and whether it was reused (a conn cache hit)."""
        active = self.active
        if len(active) < POOL_SIZE:
            s = UdpSock(self, loop)
            active.append(s)
            return s, False
        self.rr += 1
        return active[self.rr % POOL_SIZE], True

    def retire(self, s: UdpSock) -> None:
        """Stop handing ``s`` out; it closes once its in-flight queries are done."""
        s.retired = True
        try:
            self.active.remove(s)
        except ValueError:
            pass
        if not s.pending:
            s.close()
        elif s.sock is not None:
            self.draining.add(s)

    async def exchange(self, query: bytes, q: tr.Question, timeout: float) -> bytes:
        """Send ``query`` and wait for its validated reply (or an UpstreamError)."""
        p = self.send(query, q, timeout)
        try:
            return await p.fut
        finally:
            self.done(p)

    def send(self, query: bytes, q: tr.Question, timeout: float) -> UdpPending:
        """Send ``query`` with a fresh ID on a pool socket; the reply (or the error) resolves
        ``p.fut``. The caller awaits it and then must call :meth:`done` (in a finally).

        Split so the forward's attempt loop awaits the future itself: one coroutine fewer
        per miss."""
        loop = self.loop or asyncio.get_running_loop()
        up = self.up
        active = self.active
        if len(active) < POOL_SIZE:
            s, cached = self.get(loop)
        else:
            self.rr += 1
            s = active[self.rr % POOL_SIZE]
            cached = True
        self.conn[0 if cached else 1] += 1
        pending = s.pending
        ids = tr.ids
        qid = ids.pop() if ids else tr.new_id()
        while qid in pending:
            qid = tr.new_id()
        p = UdpPending(loop.create_future(), q, s, qid)
        pending[qid] = p
        s.uses += 1
        s.last = up.now()
        if s.uses >= MAX_USES:
            self.retire(s)  # stays open until this query is done
        sock = s.sock
        if sock is None:
            self.done(p)
            raise UpstreamError(f"write udp {s.local}->{up.addr}: "
                                "use of closed network connection")
        try:
            sock.send(qid.to_bytes(2, "big") + query[2:])
        except OSError as e:
            reason = (e.strerror or str(e)).lower()
            if isinstance(e, BlockingIOError):
                self.done(p)
                raise UpstreamError(f"write udp {s.local}->{up.addr}: {reason}") from None
            # An error queued by an earlier ICMP message: it concerns the socket (and fails
            # this query too).
            s.fail_all(f"read udp {s.local}->{up.addr}: read: {reason}")
            return p
        p.timer = loop.call_later(timeout, p.expire)
        return p

    def done(self, p: UdpPending) -> None:
        """The query of ``p`` is over (answered, failed or cancelled): forget it."""
        t = p.timer
        if t is not None:
            t.cancel()
            p.timer = None
        s = p.sock
        pending = s.pending
        pending.pop(p.qid, None)
        if s.retired and not pending:
            s.close()

    def sweep(self, now: float, expire: float) -> None:
        """Close sockets idle for longer than ``expire``."""
        for s in list(self.active):
            if not s.pending and now - s.last > expire:
                self.retire(s)

    def close(self) -> None:
        for s in [*self.active, *self.draining]:
            self.retire(s)
            s.close()


#: the source ports of the last PORT_WINDOW sockets opened (all upstreams of this process)
_recent_ports: deque[int] = deque()
_recent_port_set: set[int] = set()


def _open(up: Upstream) -> socket.socket:
    """A non-blocking UDP socket connected to ``up`` from a kernel-chosen (random) port that
    none of the last ``PORT_WINDOW`` sockets used: a port the kernel hands out again that
    soon is refused (kept open while the next is opened, so it cannot come back at once)."""
    refused: list[socket.socket] = []
    try:
        for attempt in range(8):
            sock = socket.socket(up.family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect(up.sockaddr)
                port = sock.getsockname()[1]
            except OSError as e:
                sock.close()
                raise UpstreamError(f"dial udp {up.addr}: {e.strerror or e}") from None
            if port not in _recent_port_set or attempt == 7:
                break  # (after 8 refusals the kernel's choice stands)
            refused.append(sock)
        _recent_ports.append(port)
        _recent_port_set.add(port)
        if len(_recent_ports) > PORT_WINDOW:
            _recent_port_set.discard(_recent_ports.popleft())
        return sock
    finally:
        for r in refused:
            r.close()


def _fmt(name: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
