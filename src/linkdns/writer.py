"""Writers: how a reply leaves the server (UDP with truncation to the client's size, TCP framed).

Plugins that need to see the reply (cache stores it, metrics count it) wrap the writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from linkdns import replies
from linkdns.request import Request


def _truncate(out: bytes, size: int) -> bytes:
    """message.truncate, imported on first use: dnslib stays out of memory until a reply
    is too big for a UDP client (about 1 MiB of RSS saved on a node that never truncates)."""
    from linkdns import message

    return message.truncate(out, size)


class Writer:
    """Base writer. ``write(reply)`` takes a complete reply; the writer fits it to the client."""

    __slots__ = ("flags", "plugin", "rcode", "req", "size")

    def __init__(self, req: Request) -> None:
        self.req = req
        #: what was sent, for metrics and the log (-1: nothing yet); who answers is the
        #: handlers' returned rcode alone (linkdns.plugin)
        self.rcode = -1
        self.size = 0
        self.plugin = ""  # name of the plugin that wrote (metrics label)
        self.flags = 0  # header flags of what was sent

    def write(self, reply: bytes, plugin: str = "") -> None:
        """Send ``reply`` (any ID/OPT: made to fit the client here)."""
        out = replies.finish_reply(self.req.q, reply)
        self.send(out, plugin)

    def send(self, out: bytes, plugin: str = "") -> None:
        """Send bytes that already fit the client (ID, question, OPT), truncating on UDP."""
        req = self.req
        if len(out) > req.q.udp_size and req.proto == "udp":
            out = _truncate(out, req.q.udp_size)
        self._record(out, plugin)
        self._emit(out)

    def drop(self) -> None:
        """End the query with no reply (a handler returned ``plugin.DROPPED``). Nothing is sent;
        ``_emit(b"")`` still runs so a writer that tracks replies in flight sees the end."""
        self._emit(b"")

    def _record(self, out: bytes, plugin: str) -> None:
        """Note what was answered (rcode, flags, size, plugin) for metrics and log."""
        n = len(out)
        if n > 3:
            self.rcode = out[3] & 0x0F
            self.flags = (out[2] << 8) | out[3]
        else:
            self.rcode = -1
            self.flags = 0
        self.size = n
        self.plugin = plugin

    def _emit(self, out: bytes) -> None:
        raise NotImplementedError


class UDPWriter(Writer):
    __slots__ = ("transport",)

    def __init__(self, req: Request, transport: asyncio.DatagramTransport) -> None:
        super().__init__(req)
        self.transport = transport

    def _emit(self, out: bytes) -> None:
        if out and not self.transport.is_closing():
            self.transport.sendto(out, self.req.peer)


class TCPWriter(Writer):
    __slots__ = ("transport",)

    def __init__(self, req: Request, transport: asyncio.Transport) -> None:
        super().__init__(req)
        self.transport = transport

    def _emit(self, out: bytes) -> None:
        if out and not self.transport.is_closing():
            self.transport.write(len(out).to_bytes(2, "big") + out)


class WrapWriter(Writer):
    """A writer that sees the reply before passing it on (cache, metrics, log)."""

    __slots__ = ("inner", "on_write")

    def __init__(self, inner: Writer, on_write: Callable[[bytes], Any] | None = None) -> None:
        super().__init__(inner.req)
        self.inner = inner
        self.on_write = on_write

    def write(self, reply: bytes, plugin: str = "") -> None:
        if self.on_write is not None:
            self.on_write(reply)
        self.inner.write(reply, plugin)
        self._copy()

    def send(self, out: bytes, plugin: str = "") -> None:
        if self.on_write is not None:
            self.on_write(out)
        self.inner.send(out, plugin)
        self._copy()

    def drop(self) -> None:
        self.inner.drop()

    def _copy(self) -> None:
        i = self.inner
        self.rcode, self.size, self.plugin, self.flags = i.rcode, i.size, i.plugin, i.flags


class Recorder(Writer):
    """A writer that keeps the reply instead of sending it (prefetch, serve-stale refresh,
    health probes through the chain). ``reply`` holds what was written, as written."""

    __slots__ = ("reply",)

    def __init__(self, req: Request) -> None:
        super().__init__(req)
        self.reply: bytes | None = None

    def write(self, reply: bytes, plugin: str = "") -> None:
        self.reply = reply
        self.send(reply, plugin)

    def send(self, out: bytes, plugin: str = "") -> None:
        if self.reply is None:
            self.reply = out
        self._record(out, plugin)

    def _emit(self, out: bytes) -> None:
        return None
