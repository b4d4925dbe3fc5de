"""TCP from clients (RFC 7766): 2-byte framing, pipelining, and the limits that keep abusive
connections from costing more than a bounded share of the server.

Limits (module constants, read when used): TCP_MAX_CONNECTIONS per listener, at most half the
process's file descriptor limit (at the limit the connection idle the longest is closed so a
new client is served; a new connection is refused only when every one has a query in
flight); TCP_IDLE_TIMEOUT without a byte from the client and nothing in flight;
TCP_READ_TIMEOUT for a frame once begun (slow senders, length prefixes larger than what
follows); TCP_MAX_PENDING queries in flight per connection (REFUSED beyond); a client that does
not read its replies stops being read while the transport's write buffer is full.
"""

from __future__ import annotations

import asyncio
import fcntl
import resource
import struct
import termios
import time
from typing import TYPE_CHECKING, Any

from linkdns import wire
from linkdns.request import Request
from linkdns.writer import TCPWriter

if TYPE_CHECKING:
    from linkdns.server.listen import Listener

_perf = time.perf_counter

TCP_IDLE_TIMEOUT = 10.0  # seconds a TCP connection may sit idle (CoreDNS: 10s idle timeout)
TCP_READ_TIMEOUT = 3.0  # a frame begun must be complete within this (CoreDNS: 3s read timeout)
#: client TCP connections per listener; at the limit the one idle the longest is closed to
#: make room (never more than half the process's file descriptor limit, see tcp_limit())
TCP_MAX_CONNECTIONS = 1000
TCP_MAX_PENDING = 100  # pipelined queries in flight per connection


def tcp_limit() -> int:
    """TCP_MAX_CONNECTIONS, or half the soft file descriptor limit if that is lower (the
    other half for UDP and upstream sockets, files, HTTP)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return TCP_MAX_CONNECTIONS
    return max(1, min(TCP_MAX_CONNECTIONS, soft // 2))


class TCPProtocol(asyncio.Protocol):
    """RFC 7766: 2-byte length framing, pipelined queries answered as they complete.

    Limits: TCP_MAX_CONNECTIONS per listener (the longest idle closed to make room),
    TCP_IDLE_TIMEOUT without a byte from the client and nothing in flight, TCP_READ_TIMEOUT
    for a frame once begun (slow senders, length prefixes larger than what follows),
    TCP_MAX_PENDING queries in flight per connection (REFUSED beyond). A client that does not
    read its replies stops being read once the transport's write buffer is full."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.peer: Any = None
        self.idle: asyncio.TimerHandle | None = None
        self.frame: asyncio.TimerHandle | None = None  # the begun frame's deadline
        self.pending = 0
        self.last = time.monotonic()  # last byte received or reply sent
        self.heard = False  # any byte received yet (see idle_for)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ln = self.listener
        # Accepted before the listener closed (stop, hand-over) is served all the same: the
        # drain waits for its query; closing it unread would cut the client off.
        if len(ln.tcp_conns) >= ln.tcp_max and not ln.make_room():
            # Closed unread: whatever it carried counts as one query dropped.
            ln.drop("tcp_limit")
            transport.close()
            return
        ln.tcp_conns.add(self)
        self.peer = transport.get_extra_info("peername")
        self.idle = asyncio.get_running_loop().call_later(TCP_IDLE_TIMEOUT, self._idle)

    def _idle(self) -> None:
        left = self.last + TCP_IDLE_TIMEOUT - time.monotonic()
        if self.pending == 0 and left <= 0:
            if self.buf:
                self.listener.drop("tcp_timeout")  # a frame begun and never finished
            self.close()
        else:
            self.idle = asyncio.get_running_loop().call_later(
                max(left, 0.1) if self.pending == 0 else TCP_IDLE_TIMEOUT, self._idle)

    def _stalled(self) -> None:
        """The begun frame did not complete within TCP_READ_TIMEOUT."""
        self.frame = None
        tr = self.transport
        if not self.buf or tr is None or tr.is_closing():
            return
        if not tr.is_reading():  # we paused reading (the client is slow to read): not its fault
            self.frame = asyncio.get_running_loop().call_later(TCP_READ_TIMEOUT, self._stalled)
            return
        self.listener.drop("tcp_timeout")
        self.close()

    def idle_for(self, now: float) -> float:
        """Seconds with no query pending, none half-read and nothing read (0 when busy, or
        when the kernel holds bytes not read yet: a loop that was late must not take a query
        already sent for an idle connection)."""
        if self.pending or self.buf or self.unread():
            return 0.0
        if not self.heard:
            # Accepted, its first query not sent yet (a client slow to be scheduled): it gets
            # the read timeout a begun frame gets before a drain takes it for idle, or a stop
            # would close it after 0 bytes and the client's query would be lost.
            return 0.0 if now - self.last < TCP_READ_TIMEOUT else now - self.last
        return now - self.last

    def unread(self) -> int:
        """Bytes received by the kernel for this connection and not read yet."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return 0
        try:
            n: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD,
                                                    b"\0\0\0\0"))[0]
        except (OSError, ValueError):
            return 0
        return n

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.tcp_conns.discard(self)
        if self.idle is not None:
            self.idle.cancel()
        if self.frame is not None:
            self.frame.cancel()

    def pause_writing(self) -> None:
        """The client is not reading its replies: stop reading its queries."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.heard = True
        self.buf += data
        self.last = time.monotonic()
        frames = wire.split_frames(self.buf)
        for frame in frames:
            try:
                self.query(frame)
            except Exception:  # a bug on the TCP path: as for UDP (see Listener.panic)
                err = self.listener.panic(frame, self.peer, True)
                if err is not None and self.transport is not None:
                    self.transport.write(len(err).to_bytes(2, "big") + err)
        if self.buf:
            if frames or self.frame is None:  # a new frame begun: its own deadline
                if self.frame is not None:
                    self.frame.cancel()
                self.frame = asyncio.get_running_loop().call_later(TCP_READ_TIMEOUT,
                                                                   self._stalled)
        elif self.frame is not None:
            self.frame.cancel()
            self.frame = None

    def query(self, data: bytes) -> None:
        t0 = _perf()
        ln = self.listener
        tr = self.transport
        assert tr is not None
        v6 = len(self.peer) > 2
        reply = ln.hit_wire(data, True, v6, t0)
        if reply is not None:
            tr.write(len(reply).to_bytes(2, "big") + reply)
            return
        out, q, r = ln.scanning_path(data, self.peer, True, v6, t0)
        if q is None or r is None:
            if out is not None:
                tr.write(len(out).to_bytes(2, "big") + out)
            return
        if self.pending >= TCP_MAX_PENDING or ln.inflight >= ln.max_inflight:
            # Too many pipelined queries in flight on this connection, or on the listener:
            # refuse this one (the ones in flight still get their answers), counted under the
            # dropped zone. A TCP client does not retry a query within its connection, so
            # it gets an answer rather than silence.
            err = wire.error_reply(q, data, wire.REFUSED)
            tr.write(len(err).to_bytes(2, "big") + err)
            ln.dropped(data, q, True, v6, err, wire.REFUSED)
            return
        self.pending += 1
        ln.slow_path(q, r, self.peer, lambda req: _TCPDone(req, tr, self), True, v6)


class _TCPDone(TCPWriter):
    """A TCP writer that tells its connection when the reply went out."""

    __slots__ = ("conn",)

    def __init__(self, req: Request, transport: asyncio.Transport, conn: TCPProtocol) -> None:
        super().__init__(req, transport)
        self.conn = conn

    def _emit(self, out: bytes) -> None:
        super()._emit(out)
        self.conn.pending -= 1
        self.conn.last = time.monotonic()
