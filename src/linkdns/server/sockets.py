"""A listener's sockets: bound here, or taken from a predecessor (hand-over), and where the
slow path's UDP answers go once the listener stopped reading."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

log = logging.getLogger("linkdns.server")

TCP_BACKLOG = 1024  # connections the kernel completes before they are accepted


def bind_pair(host: str, port: int, reuse_port: bool) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP (listening) on ``host`` (empty: every address) and ``port``; with port 0
    the same ephemeral port for both."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    addr = host or ("::" if fam == socket.AF_INET6 else "0.0.0.0")
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
            usock.bind((addr, port))
            tsock.bind((addr, usock.getsockname()[1]))
        except OSError:
            usock.close()
            tsock.close()
            if port == 0 and attempt < 19:
                continue  # ephemeral UDP port taken for TCP: pick another
            raise
        tsock.listen(TCP_BACKLOG)
        return usock, tsock
    raise OSError(f"no port free for both UDP and TCP on {addr}")


def inherited_pair(socks: list[socket.socket], name: str) -> tuple[socket.socket,
                                                                     socket.socket]:
    """The UDP and TCP socket among a predecessor's sockets for one listener."""
    udp = [s for s in socks if s.type == socket.SOCK_DGRAM]
    tcp = [s for s in socks if s.type == socket.SOCK_STREAM]
    if len(udp) != 1 or len(tcp) != 1:
        for s in socks:
            s.close()
        raise OSError(f"hand-over: {name}: expected one UDP and one TCP socket, "
                      f"got {len(udp)} and {len(tcp)}")
    return udp[0], tcp[0]


class UDPOut(asyncio.DatagramTransport):
    """Where the slow path's UDP answers go: the loop's transport while the listener reads;
    once it stopped reading (stop, hand-over), a duplicate of the same socket, so the answers
    to queries still in flight leave from the same address after the transport closed."""

    def __init__(self, transport: asyncio.DatagramTransport) -> None:
        super().__init__()
        self.transport = transport
        self.sock: socket.socket | None = None

    def is_closing(self) -> bool:
        return self.sock is None and self.transport.is_closing()

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self.sock is None:
            self.transport.sendto(data, addr)
            return
        try:
            self.sock.sendto(data, addr)
        except OSError as e:
            log.debug("udp send after stop: %s", e)


def server_label(host: str, port: int) -> str:
    """``dns://HOST:PORT``, the ``server`` label of metrics and logs (IPv6 in brackets)."""
    host = f"[{host}]" if ":" in host else host
    return f"dns://{host}:{port}"
