"""A tiny asyncio HTTP/1.1 server for the GET endpoints: /metrics, /health, /ready.

One :class:`HTTPServer` per distinct (host, port) across every server block: plugins get it
from their environment (``env.http(host, port)``, kept by the server), add their path with :meth:`HTTPServer.route`
and hold it with :meth:`~HTTPServer.acquire` / :meth:`~HTTPServer.release` from their
start/stop hooks; the first acquire binds, the last release closes.

Deliberately small: GET and HEAD only, one request per connection (``Connection: close``),
the request head bounded to 8 KiB and 5 seconds, 404 for unknown paths, 405 for other
methods. Handlers run on the event loop, so they read the server's plain counters safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

log = logging.getLogger("linkdns.http")

MAX_HEAD = 8192  # bytes of request line + headers
READ_TIMEOUT = 5.0  # seconds to receive the request head
WRITE_TIMEOUT = 5.0  # seconds to hand the response to the kernel


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str = ""
    #: header names lowercased
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Response | Awaitable[Response]]


def text(status: int, body: str) -> Response:
    return Response(status, body.encode())


class HTTPServer:
    """The listener(s) of one configured address and the paths served there."""

    def __init__(self, host: str, port: int, reuse_port: bool = False,
                 inherit: Callable[[tuple[str, str, int]], list[socket.socket] | None]
                 | None = None) -> None:
        self.host = host
        #: the predecessor's listening sockets for a key, after a hand-over (server/handover.py)
        self.inherit = inherit
        #: SO_REUSEPORT: with ``-workers N`` every worker listens and the kernel picks one
        self.reuse_port = reuse_port
        #: the configured port; :attr:`port` is the bound one once started (port 0 = ephemeral)
        self.want_port = port
        self.port = port
        self.routes: dict[str, Handler] = {}
        self.servers: list[asyncio.Server] = []
        self.refs = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        state = "listening" if self.servers else "closed"
        return f"<HTTPServer {self.address} {sorted(self.routes)} {state}>"

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def route(self, path: str, handler: Handler) -> None:
        """Serve ``path`` with ``handler``; the first plugin to claim a path keeps it."""
        self.routes.setdefault(path, handler)

    async def acquire(self) -> None:
        """Bind on first use (raises OSError when the address is taken)."""
        async with self._lock():
            if self.refs == 0:
                await self._bind()
            self.refs += 1

    async def release(self) -> None:
        """Close when the last user lets go."""
        async with self._lock():
            if self.refs <= 0:
                return
            self.refs -= 1
            if self.refs == 0:
                await self.close()

    def _lock(self) -> asyncio.Lock:
        if self.lock is None:
            self.lock = asyncio.Lock()
        return self.lock

    def fds(self) -> list[int]:
        """The listening sockets' fds, for a successor."""
        return [sock.fileno() for s in self.servers for sock in s.sockets]

    async def rebind(self) -> None:
        """Listen again after :meth:`stop_accepting` (a successor went away): on the sockets
        the server kept (``inherit``), or bound afresh."""
        async with self._lock():
            if self.refs > 0:
                self.servers = []
                await self._bind()

    def stop_accepting(self) -> None:
        """Close the listening sockets (connections being answered finish): after a
        hand-over, the successor holding the same sockets answers every new request."""
        for s in self.servers:
            s.close()

    async def _bind(self) -> None:
        inherited = self.inherit(("http", self.host, self.want_port)) \
            if self.inherit is not None and self.want_port else None
        if inherited:
            for sock in inherited:
                sock.setblocking(False)
                self.servers.append(await asyncio.start_server(
                    self._client, sock=sock, limit=MAX_HEAD))
            self.port = inherited[0].getsockname()[1]
            return
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.host or None, self.want_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        addrs: list[tuple[int, tuple[str, int]]] = []
        for info in infos:
            entry = (int(info[0]), (str(info[4][0]), int(info[4][1])))
            if entry not in addrs:
                addrs.append(entry)
        port = self.want_port
        try:
            for i, (fam, (host, _)) in enumerate(addrs):
                sock = socket.socket(fam, socket.SOCK_STREAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if self.reuse_port:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    if fam == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind((host, port))
                except OSError as e:
                    sock.close()
                    if i == 0:
                        raise
                    # e.g. "localhost" or "" also resolving to an IPv6 address the host lacks
                    log.warning("http: not listening on %s port %d: %s", host, port, e.strerror)
                    continue
                port = sock.getsockname()[1]  # the other addresses share an ephemeral port
                sock.listen(128)
                sock.setblocking(False)
                self.servers.append(await asyncio.start_server(
                    self._client, sock=sock, limit=MAX_HEAD))
        except BaseException:
            await self.close()
            raise
        self.port = port

    async def close(self) -> None:
        servers, self.servers = self.servers, []
        for s in servers:
            s.close()
        for w in list(self.writers):
            w.close()
        for s in servers:
            with contextlib.suppress(Exception):
                await s.wait_closed()

    # -- one connection ---------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            resp = await self._respond(reader)
            if resp is not None:
                writer.write(resp)
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except (OSError, TimeoutError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except asyncio.LimitOverrunError:
            return render(text(431, "request header too large\n"), head_only=False)
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            return None  # closed or stalled before a full request: nothing to answer
        req = parse_head(head)
        if req is None:
            return render(text(400, "bad request\n"), head_only=False)
        head_only = req.method == "HEAD"
        if req.method not in ("GET", "HEAD"):
            resp = Response(405, b"method not allowed\n", headers=(("Allow", "GET, HEAD"),))
            return render(resp, head_only)
        handler = self.routes.get(req.path)
        if handler is None:
            return render(text(404, "404 page not found\n"), head_only)
        try:
            out = handler(req)
            resp = await out if not isinstance(out, Response) else out
        except Exception:
            log.exception("http: handler for %s failed", req.path)
            resp = text(500, "internal server error\n")
        return render(resp, head_only)


def parse_head(head: bytes) -> Request | None:
    """The request line and headers, or None when malformed."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1.") or not target.startswith("/"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    path, _, query = target.partition("?")
    return Request(method, path, query, headers)


def render(resp: Response, head_only: bool) -> bytes:
    try:
        reason = HTTPStatus(resp.status).phrase
    except ValueError:
        reason = ""
    lines = [
        f"HTTP/1.1 {resp.status} {reason}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in resp.headers),
    ]
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return out if head_only else out + resp.body
