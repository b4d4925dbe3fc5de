"""The Server's side of a hand-over (server/handover.py has the protocol): what it hands a
successor, what it does once handed over, serving again when the successor goes, and moving
the control socket when a reload changes the listen addresses."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from linkdns import http
from linkdns.server import handover, handover_messages

if TYPE_CHECKING:
    from linkdns.server.listen import Listener
    from linkdns.server.site import Site

log = logging.getLogger("linkdns.server")


class Succession:
    """Mixed into the Server (server/lifecycle.py), which sets these attributes up."""

    handover_path: str | None
    handover_derive: Callable[[list[tuple[str, int]]], str | None] | None
    handover_hooks: list[Callable[[], None]]
    handed_over: bool
    inherited: handover.Inherited | None
    stopping: bool
    sites: list[Site]
    listeners: dict[tuple[str, int], Listener]
    http_servers: dict[tuple[str, int], http.HTTPServer]
    background: dict[str, asyncio.Task[Any]]
    _control: handover.Control | None
    _saved: handover.Inherited | None
    _retired: asyncio.Task[None] | None

    if TYPE_CHECKING:
        async def _listen(self, sites: list[Site]) -> list[Listener]: ...
        async def _retire(self) -> None: ...
        def _stop_reading(self) -> None: ...

    def _open_control(self, path: str) -> None:
        self._control = handover.Control(path, self.listening, self.handover_hooks,
                                         self._handed_over, refuse=lambda: self.stopping,
                                         gone=self._successor_gone)
        self._control.open()

    def _successor_gone(self, peer: handover_messages.Peer) -> None:
        if not self.stopping and self.handed_over:
            # not spawn(): a drain in progress would wait for it while it waits for the drain
            self.background["resume"] = asyncio.get_running_loop().create_task(
                self._resume(peer))

    async def _resume(self, peer: handover_messages.Peer) -> None:
        """The successor stopped or died while this instance idled: serve the same sockets
        again (the duplicates kept at the hand-over) and listen for the next successor."""
        if self._retired is not None:
            await self._retired
        saved, self._saved = self._saved, None
        if self.stopping or saved is None:
            return
        self.handed_over = False
        self._retired = None
        gone, self.listeners = self.listeners, {}
        for ln in gone.values():
            ln.close()
        self.inherited = saved
        try:
            await self._listen(self.sites)
            for srv in self.http_servers.values():
                await srv.rebind()
        finally:
            self.inherited.close()
            self.inherited = None
        self.background.pop("resume", None)
        if self.handover_path is not None:
            self._open_control(self.handover_path)
        log.warning("hand-over: pid %d went away; serving our sockets again", peer.pid)

    def _move_control(self) -> None:
        """After a reload: the control socket where the new listen addresses put it."""
        if self.handover_derive is None or self.handed_over:
            return
        path = self.handover_derive(self.listen_keys())
        if path == self.handover_path:
            return
        if self._control is not None:
            self._control.close()
            self._control = None
        self.handover_path = path
        if path is not None:
            try:
                self._open_control(path)
            except OSError as e:
                log.error("hand-over: no control socket at %s: %s", path, e)

    def take_inherited(self, key: handover.Key) -> list[Any] | None:
        """The predecessor's sockets for ``key`` (("dns"|"http", host, port)), if any."""
        return self.inherited.take(key) if self.inherited is not None else None

    def listening(self) -> list[tuple[handover.Key, int]]:
        """Every listening socket, for a successor: DNS (UDP and TCP) and HTTP."""
        out: list[tuple[handover.Key, int]] = []
        for (host, port), ln in self.listeners.items():
            out.extend((("dns", host, port), fd) for fd in ln.fds())
        for (host, port), srv in self.http_servers.items():
            if srv.want_port:
                out.extend((("http", host, port), fd) for fd in srv.fds())
        return out

    def listen_keys(self) -> list[tuple[str, int]]:
        """The (address, port) pairs the DNS listeners serve ("" = every address)."""
        return sorted({(a, s.port) for s in self.sites for a in s.addrs or [""]})

    def _handed_over(self, peer: handover_messages.Peer) -> None:
        kept: dict[handover.Key, list[socket.socket]] = {}
        for key, fd in self.listening():
            kept.setdefault(key, []).append(socket.socket(fileno=os.dup(fd)))
        self._saved = handover.Inherited(kept, os.getpid())
        self.handed_over = True
        self._stop_reading()  # now, before the successor hears back: not one more read
        log.info("hand-over: pid %d serves on our sockets; stopped reading, draining; "
                 "SIGTERM ends this process", peer.pid)
        if self._retired is None:
            self._retired = asyncio.get_running_loop().create_task(self._retire())

