"""A scriptable fake upstream DNS server for linkdns's tests.

The server is deliberately independent of linkdns: queries are parsed and
answers built with dnspython only.  It listens on UDP *and* TCP on the same
port of 127.0.0.1 (or ``::1``) and runs its own asyncio loop in a background
thread, so it can be used from plain synchronous tests as well as from async
tests that run their own event loop.

Typical use::

    from fakeupstream import Drop, FakeUpstream, Reply, Truncated, a_records

    with FakeUpstream() as up:
        up.handler = lambda q, proto: Truncated() if proto == "udp" else None
        # ... run linkdns with "forward . {up.addr}" and query it ...
        up.wait_for(2)
        assert [r.proto for r in up.queries] == ["udp", "tcp"]

A handler is called on the server's loop thread for every parsed query as
``handler(query, proto)`` (``proto`` is ``"udp"`` or ``"tcp"``) and returns one
of:

* ``None`` -- use the default behaviour (zone set by :meth:`FakeUpstream.set_zone`,
  otherwise ``A 192.0.2.1`` TTL 60 for any name);
* a :class:`dns.message.Message` -- sent with the query's ID (same as ``Reply(msg)``);
* ``bytes`` -- sent verbatim (same as ``Reply(data)``);
* an :class:`Action` (``Reply``, ``Drop``, ``Garbage``, ``Truncated``, ``WrongID``,
  ``WrongQuestion``, ``FromWrongPort``, ``CloseTCP``, ``PartialTCP``, ``Multi``, ``Hold``);
* a list/tuple of the above -- all are performed (each with its own delay).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import ipaddress
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias, cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_GARBAGE",
    "Action",
    "CloseTCP",
    "Drop",
    "FakeUpstream",
    "FromWrongPort",
    "Garbage",
    "Handler",
    "HandlerResult",
    "Hold",
    "Multi",
    "PartialTCP",
    "QueryRecord",
    "Reply",
    "Truncated",
    "UncompressedMessage",
    "WrongID",
    "WrongQuestion",
    "a_records",
    "answer",
    "make_reply",
    "nodata",
    "nxdomain",
    "refused",
    "render",
    "sequence",
    "servfail",
    "tc_reply",
    "to_wire_uncompressed",
    "uncompressed",
]

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "192.0.2.1"
DEFAULT_TTL = 60
#: 7 bytes: shorter than a DNS header, so never a parseable DNS message.
DEFAULT_GARBAGE = b"\xde\xad\xbe\xef\x13\x37\x00"

MsgOrWire: TypeAlias = dns.message.Message | bytes


# --------------------------------------------------------------------------
# Wire helpers
# --------------------------------------------------------------------------


def to_wire_uncompressed(msg: dns.message.Message) -> bytes:
    """Render *msg* to wire format with **no** name compression at all.

    Every owner name (and every name inside RDATA) is written in full.  RRs
    keep their order (no shuffling); OPT is emitted last in the additional
    section.  TSIG is not supported.
    """
    body = io.BytesIO()
    for q in msg.question:
        q.name.to_wire(body)
        body.write(struct.pack("!HH", q.rdtype, q.rdclass))
    counts: list[int] = []
    for section in (msg.answer, msg.authority, msg.additional):
        n = 0
        for rrset in section:
            n += rrset.to_wire(body, None, None, want_shuffle=False)
        counts.append(n)
    if msg.opt is not None:
        counts[2] += msg.opt.to_wire(body, None, None, want_shuffle=False)
    header = struct.pack("!HHHHHH", msg.id, msg.flags, len(msg.question), *counts)
    return header + body.getvalue()


class UncompressedMessage(dns.message.QueryMessage):
    """A dnspython message whose :meth:`to_wire` never compresses names."""

    def to_wire(
        self,
        origin: dns.name.Name | None = None,
        max_size: int = 0,
        multi: bool = False,
        tsig_ctx: Any | None = None,
        prepend_length: bool = False,
        prefer_truncation: bool = False,
        **kw: Any,
    ) -> bytes:
        wire = to_wire_uncompressed(self)
        if prepend_length:
            wire = len(wire).to_bytes(2, "big") + wire
        return wire


def uncompressed(msg: dns.message.Message) -> UncompressedMessage:
    """Turn *msg* (in place) into an :class:`UncompressedMessage` and return it."""
    msg.__class__ = UncompressedMessage
    assert isinstance(msg, UncompressedMessage)
    return msg


def render(msg: MsgOrWire, msg_id: int | None = None) -> bytes:
    """Wire bytes for *msg*, never truncated; *msg_id* (if given) patched in.

    Bytes are returned unchanged unless *msg_id* is given.
    """
    # max_size=65535: ignore the requestor's EDNS size (sent whole on purpose);
    # want_shuffle=False: deterministic RR order.
    wire = msg if isinstance(msg, bytes) else msg.to_wire(max_size=65535, want_shuffle=False)
    if msg_id is not None and len(wire) >= 2:
        wire = struct.pack("!H", msg_id & 0xFFFF) + wire[2:]
    return wire


# --------------------------------------------------------------------------
# Answer builders (all take the *query* and return a response Message)
# --------------------------------------------------------------------------


def _qname(query: dns.message.Message) -> dns.name.Name:
    return query.question[0].name if query.question else dns.name.root


def _apex(name: dns.name.Name) -> dns.name.Name:
    """Guess a zone apex for SOA records: the last two labels of *name*."""
    labels = name.labels
    return dns.name.Name(labels[-3:]) if len(labels) > 3 else name


def _name(text: str | dns.name.Name) -> dns.name.Name:
    return text if isinstance(text, dns.name.Name) else dns.name.from_text(text)


def make_reply(
    query: dns.message.Message,
    *,
    rcode: int = dns.rcode.NOERROR,
    aa: bool = False,
    ra: bool = True,
    compress: bool = True,
) -> dns.message.Message:
    """An empty response to *query* (question copied, EDNS mirrored if present)."""
    resp = dns.message.make_response(query, recursion_available=ra)
    resp.set_rcode(dns.rcode.Rcode.make(rcode))
    if aa:
        resp.flags |= dns.flags.AA
    return resp if compress else uncompressed(resp)


def _add_rr(
    msg: dns.message.Message,
    section: list[dns.rrset.RRset],
    name: str | dns.name.Name,
    ttl: int,
    rdtype: str,
    rdata: str,
) -> None:
    rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), rdata)
    rrset = msg.find_rrset(section, _name(name), dns.rdataclass.IN, rd.rdtype, create=True)
    rrset.add(rd, ttl)


RR: TypeAlias = tuple[str, int, str, str]


def answer(
    query: dns.message.Message,
    rrs: Iterable[RR] = (),
    *,
    aa: bool = False,
    rcode: int = dns.rcode.NOERROR,
    authority: Iterable[RR] = (),
    additional: Iterable[RR] = (),
    compress: bool = True,
) -> dns.message.Message:
    """A response with the given records, each ``(name, ttl, type, rdata_text)``.

    >>> answer(q, [("www.example.org.", 300, "CNAME", "web.example.org."),
    ...            ("web.example.org.", 60, "A", "192.0.2.7")], aa=True)
    """
    resp = make_reply(query, rcode=rcode, aa=aa, compress=compress)
    for section, records in (
        (resp.answer, rrs),
        (resp.authority, authority),
        (resp.additional, additional),
    ):
        for name, ttl, rdtype, rdata in records:
            _add_rr(resp, section, name, ttl, rdtype, rdata)
    return resp


def a_records(
    query: dns.message.Message,
    n: int,
    ttl: int = DEFAULT_TTL,
    *,
    compress: bool = True,
    first: str = DEFAULT_ADDRESS,
) -> dns.message.Message:
    """A NOERROR response with *n* A records for the query name.

    Addresses are *first*, *first*+1, ...  With ``compress=False`` the result
    is an :class:`UncompressedMessage` (every owner name written in full, so
    e.g. 40 records for ``x.example.org.`` make a 1191-byte message).
    """
    base = ipaddress.IPv4Address(first)
    qname = _qname(query)
    return answer(
        query, [(qname.to_text(), ttl, "A", str(base + i)) for i in range(n)], compress=compress
    )


def _soa(apex: dns.name.Name, soa_ttl: int, soa_minimum: int) -> RR:
    a = apex.to_text()
    prefix = "" if a == "." else "."
    return (
        a,
        soa_ttl,
        "SOA",
        f"ns1{prefix}{a} hostmaster{prefix}{a} 1 3600 600 86400 {soa_minimum}",
    )


def nxdomain(
    query: dns.message.Message,
    soa_ttl: int = DEFAULT_TTL,
    soa_minimum: int = DEFAULT_TTL,
    *,
    zone: str | None = None,
    aa: bool = True,
) -> dns.message.Message:
    """NXDOMAIN with an SOA in authority (apex *zone*, default: qname's last 2 labels)."""
    apex = _name(zone) if zone else _apex(_qname(query))
    return answer(
        query, rcode=dns.rcode.NXDOMAIN, aa=aa, authority=[_soa(apex, soa_ttl, soa_minimum)]
    )


def nodata(
    query: dns.message.Message,
    soa_ttl: int = DEFAULT_TTL,
    soa_minimum: int = DEFAULT_TTL,
    *,
    zone: str | None = None,
    aa: bool = True,
) -> dns.message.Message:
    """NOERROR, empty answer, SOA in authority (RFC 2308 NODATA)."""
    apex = _name(zone) if zone else _apex(_qname(query))
    return answer(query, aa=aa, authority=[_soa(apex, soa_ttl, soa_minimum)])


def servfail(query: dns.message.Message) -> dns.message.Message:
    return make_reply(query, rcode=dns.rcode.SERVFAIL)


def refused(query: dns.message.Message) -> dns.message.Message:
    return make_reply(query, rcode=dns.rcode.REFUSED)


def tc_reply(query: dns.message.Message) -> dns.message.Message:
    """An empty response with TC=1 (what :class:`Truncated` sends over UDP)."""
    resp = make_reply(query)
    resp.flags |= dns.flags.TC
    return resp


# --------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------


class Action:
    """Base class of everything a handler can ask the server to do."""

    delay: float = 0.0


@dataclass
class Reply(Action):
    """Send *msg* after *delay* seconds (other queries are not blocked).

    A Message is rendered (compressed unless it is an UncompressedMessage) and
    given the query's ID unless ``keep_id=True``; bytes are sent verbatim.
    """

    msg: MsgOrWire
    delay: float = 0.0
    keep_id: bool = False


@dataclass
class Drop(Action):
    """Send nothing."""

    delay: float = 0.0


@dataclass
class Garbage(Action):
    """Send raw *data* (default: 7 bytes that are not a DNS message)."""

    data: bytes = DEFAULT_GARBAGE
    delay: float = 0.0

    @classmethod
    def truncated_body(
        cls, query: dns.message.Message, cut: int = 5, delay: float = 0.0
    ) -> Garbage:
        """A well-formed header (right ID, QR=1, ANCOUNT=1) whose body is cut short."""
        wire = render(a_records(query, 1))
        return cls(wire[: max(12, len(wire) - cut)], delay)

    @classmethod
    def bad_body(
        cls,
        query: dns.message.Message,
        qdcount: int = 0xFFFF,
        size: int = 40,
        seed: int = 0,
        delay: float = 0.0,
    ) -> Garbage:
        """A response header with the query's ID (QR=1, RD/RA, NOERROR, *qdcount*
        questions, no records) followed by *size* pseudo-random bytes (from *seed*):
        right ID, right address, a body that cannot be read."""
        rng = random.Random(seed)
        head = struct.pack("!HHHHHH", query.id, 0x8180, qdcount & 0xFFFF, 0, 0, 0)
        return cls(head + bytes(rng.randrange(256) for _ in range(size)), delay)


@dataclass
class Truncated(Action):
    """Over UDP: an empty reply with TC=1.

    Over TCP: *tcp* (a Message/bytes/Action) if given, otherwise the default answer.
    """

    tcp: HandlerResult = None
    delay: float = 0.0


@dataclass
class WrongID(Action):
    """Send *msg* (default: the default answer) with an ID that does not match.

    The ID is *id* if given, else ``(query.id + 1) & 0xFFFF``.
    """

    msg: MsgOrWire | None = None
    id: int | None = None
    delay: float = 0.0


@dataclass
class WrongQuestion(Action):
    """Send *msg* (default: the default answer) with the right ID but a different question.

    The question name becomes *qname* (``None`` keeps it), its type *qtype*
    (``None`` keeps it).  Answer records are left untouched.
    """

    msg: MsgOrWire | None = None
    qname: str | None = "wrong-question.example."
    qtype: str | None = None
    delay: float = 0.0


@dataclass
class FromWrongPort(Action):
    """Over UDP send the (correct) reply from a different socket/port. Over TCP: a normal reply."""

    msg: MsgOrWire | None = None
    delay: float = 0.0


@dataclass
class CloseTCP(Action):
    """Close the TCP connection without answering (``reset=True``: RST instead of FIN).

    Over UDP this behaves like :class:`Drop`.
    """

    reset: bool = False
    delay: float = 0.0


@dataclass
class PartialTCP(Action):
    """Over TCP: send the length prefix of *msg* (default: the default answer) and only its
    first *cut* bytes, then reset the connection (``reset=False``: close it with FIN).

    Over UDP: an empty reply with TC=1, so a resolver comes back over TCP and meets the cut.
    """

    msg: MsgOrWire | None = None
    cut: int = 20
    reset: bool = True
    delay: float = 0.0


@dataclass
class Hold(Action):
    """Perform *then* (``None``: the default answer) once *gate* is set.

    For tests that need queries in flight at the same time without betting on a delay:
    ``gate = threading.Event(); up.handler = lambda q, p: Hold(gate)``, wait for the state
    under test (e.g. ``up.wait_for(2)``), then ``gate.set()``.  Bounded: after *timeout*
    seconds *then* is performed anyway (a test that forgot to open the gate fails, not hangs).
    """

    gate: threading.Event
    then: HandlerResult = None
    timeout: float = 10.0


class Multi(Action):
    """Perform several actions for one query (concurrently; each has its own delay).

    ``Multi(WrongID(), Reply(msg, delay=0.05))`` sends a mismatching reply first.
    A handler may also simply return a list of results.
    """

    def __init__(self, *actions: HandlerResult) -> None:
        self.actions: list[HandlerResult] = list(actions)

    def __repr__(self) -> str:
        return f"Multi({', '.join(map(repr, self.actions))})"


HandlerResult: TypeAlias = (
    Action
    | dns.message.Message
    | bytes
    | list["HandlerResult"]
    | tuple["HandlerResult", ...]
    | None
)
Handler: TypeAlias = Callable[[dns.message.Message, str], HandlerResult]


def sequence(*results: HandlerResult | Handler, then: HandlerResult | Handler = None) -> Handler:
    """A handler returning *results* in order (one per query), then *then* forever.

    Items may be handler results or handler callables.  ``None`` = default answer.
    E.g. ``up.handler = sequence(Drop(), Drop())`` drops two queries, then answers.
    """
    items = list(results)
    lock = threading.Lock()

    def handler(query: dns.message.Message, proto: str) -> HandlerResult:
        with lock:
            item = items.pop(0) if items else then
        return item(query, proto) if callable(item) else item

    return handler


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------


class QueryRecord(NamedTuple):
    proto: str  # "udp" | "tcp"
    qname: str  # as received, e.g. "www.example.org."
    qtype: str  # e.g. "A"
    has_edns: bool
    edns_payload: int | None  # None without EDNS
    id: int


@dataclass
class _Entry:
    record: QueryRecord
    message: dns.message.Message
    peer: Any


class _Channel:
    proto = ""

    def __init__(self, up: FakeUpstream) -> None:
        self.up = up
        self.pending: set[asyncio.Task[None]] = set()

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    def send_from_other_port(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self, reset: bool = False) -> None:
        pass


class _UdpChannel(_Channel):
    proto = "udp"

    def __init__(self, up: FakeUpstream, transport: asyncio.DatagramTransport, peer: Any) -> None:
        super().__init__(up)
        self.transport = transport
        self.peer = peer

    async def send(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.sendto(data, self.peer)

    def send_from_other_port(self, data: bytes) -> None:
        with socket.socket(self.up.family, socket.SOCK_DGRAM) as s:
            s.bind((self.up.host, 0))
            s.sendto(data, self.peer)


class _TcpChannel(_Channel):
    proto = "tcp"

    def __init__(self, up: FakeUpstream, writer: asyncio.StreamWriter) -> None:
        super().__init__(up)
        self.writer = writer
        self.lock = asyncio.Lock()
        self.closed = False

    async def send_partial(self, data: bytes, cut: int, reset: bool) -> None:
        """The length prefix of *data* and its first *cut* bytes, then close."""
        async with self.lock:
            if self.closed:
                return
            try:
                self.writer.write(len(data).to_bytes(2, "big") + data[:cut])
                await self.writer.drain()
            except (ConnectionError, RuntimeError):
                pass
            self.close(reset)

    async def send(self, data: bytes) -> None:
        async with self.lock:
            if self.closed:
                return
            try:
                self.writer.write(len(data).to_bytes(2, "big") + data)
                await self.writer.drain()
            except (ConnectionError, RuntimeError):
                self.closed = True
                return
            if self.up.close_tcp_after_each:
                self.close()

    def send_from_other_port(self, data: bytes) -> None:
        raise AssertionError("not used for TCP")

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if reset:
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.transport.abort()
        else:
            self.writer.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, up: FakeUpstream) -> None:
        self.up = up
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (the selector datagram transport is not a DatagramTransport subclass in 3.11)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.up._process(data, _UdpChannel(self.up, self.transport, addr), addr)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        pass


ZoneValue: TypeAlias = Sequence[str] | tuple[int, Sequence[str]]


class FakeUpstream:
    """Scriptable upstream DNS server on UDP+TCP ``host:port`` (see module doc).

    Attributes a test may set at any time:

    * ``handler`` -- ``fn(query, proto) -> HandlerResult`` or ``None`` (default behaviour);
    * ``close_tcp_after_each`` -- close a TCP connection after each answer sent;
    * ``respect_udp_size`` -- if True, UDP answers larger than the query's EDNS
      payload (512 without EDNS) are replaced by an empty TC=1 reply.  Default
      False: answers are sent whole, whatever the requestor advertised.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        handler: Handler | None = None,
        *,
        close_tcp_after_each: bool = False,
        respect_udp_size: bool = False,
    ) -> None:
        self.host = host
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.handler: Handler | None = handler
        self.close_tcp_after_each = close_tcp_after_each
        self.respect_udp_size = respect_udp_size
        self.port = 0

        self._cond = threading.Condition()
        self._entries: list[_Entry] = []
        self._tcp_accepted = 0
        self._malformed = 0
        self._errors: list[BaseException] = []
        self._zone: dict[dns.name.Name, tuple[int, list[str]]] | None = None
        self._negative_ttl = DEFAULT_TTL

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._socks: tuple[socket.socket, socket.socket] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # actions being performed
        self._conn_tasks: set[asyncio.Task[Any]] = set()  # one per TCP connection
        self._tcp_channels: set[_TcpChannel] = set()
        self._tcp_server: asyncio.Server | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def addr(self) -> str:
        """``"127.0.0.1:PORT"`` / ``"[::1]:PORT"``, e.g. for ``forward . {up.addr}``."""
        host = f"[{self.host}]" if self.family == socket.AF_INET6 else self.host
        return f"{host}:{self.port}"

    @property
    def sockaddr(self) -> tuple[str, int]:
        """``(host, port)`` for socket / dnspython use."""
        return (self.host, self.port)

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        last: OSError | None = None
        for _ in range(20):
            udp = socket.socket(self.family, socket.SOCK_DGRAM)
            tcp = socket.socket(self.family, socket.SOCK_STREAM)
            try:
                udp.bind((self.host, 0))
                port = udp.getsockname()[1]
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.host, port))
            except OSError as exc:
                udp.close()
                tcp.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                last = exc
                continue
            self.port = port
            return udp, tcp
        raise RuntimeError(f"could not bind UDP+TCP on the same port of {self.host}") from last

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            raise RuntimeError("FakeUpstream already started")
        self._socks = self._bind()
        self._ready.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"FakeUpstream-{self.port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(5.0):
            raise RuntimeError("FakeUpstream did not start")
        if self._startup_error is not None:
            self._thread.join(1.0)
            self._thread = None
            raise RuntimeError("FakeUpstream failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Close all sockets, stop the loop and join its thread (idempotent)."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stopping.set)
        thread.join(2.0)
        if thread.is_alive():
            raise RuntimeError("FakeUpstream thread did not stop")
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop()
        if exc_type is None and self.errors:
            raise RuntimeError(f"FakeUpstream handler raised: {self.errors!r}") from self.errors[0]

    def _run(self) -> None:
        self._startup_error = None
        try:
            # A plain selector loop whatever policy (e.g. uvloop) the tests installed.
            with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
                runner.run(self._main())
        except BaseException as exc:  # pragma: no cover - surfaced via start()
            self._startup_error = exc
            self._ready.set()
        finally:
            if self._socks is not None:  # only if _main never adopted them
                for s in self._socks:
                    s.close()
                self._socks = None

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        assert self._socks is not None
        udp_sock, tcp_sock = self._socks
        self._socks = None
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=udp_sock
            )
        except BaseException:
            udp_sock.close()
            tcp_sock.close()
            raise
        try:
            server = await asyncio.start_server(self._on_tcp, sock=tcp_sock)
        except BaseException:
            transport.close()
            tcp_sock.close()
            raise
        self._tcp_server = server
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            transport.close()
            for ch in list(self._tcp_channels):
                ch.close(reset=True)  # their reader loops end on EOF
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._conn_tasks:
                _, stuck = await asyncio.wait(list(self._conn_tasks), timeout=0.5)
                for t in stuck:
                    t.cancel()
                await asyncio.gather(*stuck, return_exceptions=True)
            await server.wait_closed()
            await asyncio.sleep(0)  # let transports finish closing

    def refuse_tcp(self) -> None:
        """Close the TCP listening socket (new connections are refused: RST to the SYN) and
        reset the connections already open. UDP keeps working. Not undone until stop()."""
        loop, server = self._loop, self._tcp_server
        assert loop is not None and server is not None

        def close() -> None:
            server.close()
            for ch in list(self._tcp_channels):
                ch.close(reset=True)

        loop.call_soon_threadsafe(close)
        deadline = time.monotonic() + 2.0
        while server.is_serving() and time.monotonic() < deadline:
            time.sleep(0.005)

    # ------------------------------------------------------------ serving

    def _spawn(self, coro: Any, ch: _Channel | None = None) -> asyncio.Task[None]:
        assert self._loop is not None
        task: asyncio.Task[None] = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if ch is not None:
            ch.pending.add(task)
            task.add_done_callback(ch.pending.discard)
        return task

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._conn_tasks.add(current)
            current.add_done_callback(self._conn_tasks.discard)
        with self._cond:
            self._tcp_accepted += 1
        ch = _TcpChannel(self, writer)
        self._tcp_channels.add(ch)
        peer = writer.get_extra_info("peername")
        try:
            while not ch.closed:
                n = int.from_bytes(await reader.readexactly(2), "big")
                wire = await reader.readexactly(n)
                self._process(wire, ch, peer)
            # Closed by an action: wait for nothing, the channel drops later sends.
        except (asyncio.IncompleteReadError, ConnectionError):
            # EOF from the client: finish answering what was asked, then close.
            if ch.pending and not ch.closed:
                await asyncio.gather(*list(ch.pending), return_exceptions=True)
        except asyncio.CancelledError:
            # Only on stop(); returning normally keeps 3.11's start_server
            # callback from logging "Exception in callback ... CancelledError".
            pass
        finally:
            ch.close()
            self._tcp_channels.discard(ch)

    def _process(self, wire: bytes, ch: _Channel, peer: Any) -> None:
        """Called on the loop thread for every datagram / TCP message."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            with self._cond:
                self._malformed += 1
            return
        has_edns = query.edns >= 0
        q = query.question[0] if query.question else None
        rec = QueryRecord(
            proto=ch.proto,
            qname=q.name.to_text() if q is not None else "",
            qtype=dns.rdatatype.to_text(q.rdtype) if q is not None else "",
            has_edns=has_edns,
            edns_payload=query.payload if has_edns else None,
            id=query.id,
        )
        with self._cond:
            self._entries.append(_Entry(rec, query, peer))
            self._cond.notify_all()
        try:
            handler = self.handler
            result = handler(query, ch.proto) if handler is not None else None
        except Exception as exc:
            log.exception("FakeUpstream handler failed")
            with self._cond:
                self._errors.append(exc)
            return
        self._spawn(self._execute(result, query, ch), ch)

    async def _execute(
        self, result: HandlerResult, query: dns.message.Message, ch: _Channel
    ) -> None:
        try:
            await self._perform(result, query, ch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("FakeUpstream failed to perform %r", result)
            with self._cond:
                self._errors.append(exc)

    async def _perform(
        self, result: HandlerResult, query: dns.message.Message, ch: _Channel
    ) -> None:
        if result is None:
            result = Reply(self.default_answer(query))
        elif isinstance(result, dns.message.Message | bytes):
            result = Reply(result)
        elif isinstance(result, list | tuple):
            result = Multi(*result)
        if isinstance(result, Multi):
            await asyncio.gather(*(self._perform(r, query, ch) for r in result.actions))
            return
        if isinstance(result, Hold):
            deadline = time.monotonic() + result.timeout
            while not result.gate.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            await self._perform(result.then, query, ch)
            return
        if not isinstance(result, Action):
            raise TypeError(f"handler returned {result!r}")
        if result.delay > 0:
            await asyncio.sleep(result.delay)

        udp = ch.proto == "udp"
        match result:
            case Reply(msg=msg, keep_id=keep_id):
                msg_id = None if keep_id or isinstance(msg, bytes) else query.id
                await ch.send(self._fit(render(msg, msg_id), query, ch))
            case Drop():
                pass
            case Garbage(data=data):
                await ch.send(data)
            case Truncated(tcp=tcp):
                if udp:
                    await ch.send(render(tc_reply(query)))
                else:
                    await self._perform(tcp, query, ch)
            case WrongID(msg=msg, id=wrong):
                wrong_id = (query.id + 1) & 0xFFFF if wrong is None else wrong
                data = render(self._msg_or_default(msg, query), wrong_id)
                await ch.send(self._fit(data, query, ch))
            case WrongQuestion(msg=msg, qname=qname, qtype=qtype):
                resp = dns.message.from_wire(render(self._msg_or_default(msg, query), query.id))
                old = resp.question[0]
                resp.question = [
                    dns.rrset.RRset(
                        _name(qname) if qname else old.name,
                        old.rdclass,
                        dns.rdatatype.from_text(qtype) if qtype else old.rdtype,
                    )
                ]
                await ch.send(self._fit(render(resp), query, ch))
            case FromWrongPort(msg=msg):
                data = self._fit(render(self._msg_or_default(msg, query), query.id), query, ch)
                if udp:
                    ch.send_from_other_port(data)
                else:
                    await ch.send(data)
            case CloseTCP(reset=reset):
                ch.close(reset)
            case PartialTCP(msg=msg, cut=cut, reset=reset):
                if isinstance(ch, _TcpChannel):
                    data = render(self._msg_or_default(msg, query), query.id)
                    await ch.send_partial(data, cut, reset)
                else:
                    await ch.send(render(tc_reply(query)))
            case _:
                raise TypeError(f"unknown action {result!r}")

    def _msg_or_default(self, msg: MsgOrWire | None, query: dns.message.Message) -> MsgOrWire:
        return self.default_answer(query) if msg is None else msg

    def _fit(self, data: bytes, query: dns.message.Message, ch: _Channel) -> bytes:
        if ch.proto != "udp" or not self.respect_udp_size:
            return data
        limit = max(512, query.payload) if query.edns >= 0 else 512
        return data if len(data) <= limit else render(tc_reply(query))

    # ------------------------------------------------------------ default behaviour

    def set_zone(
        self,
        records: Mapping[str, ZoneValue] | None,
        *,
        ttl: int = DEFAULT_TTL,
        negative_ttl: int = DEFAULT_TTL,
    ) -> None:
        """Make the default behaviour serve a tiny zone instead of the wildcard answer.

        ``records`` maps a name to a list of addresses (IPv4 -> A, IPv6 -> AAAA),
        optionally with its own TTL: ``{"a.example.org": ["192.0.2.10"],
        "b.example.org.": (300, ["192.0.2.11", "2001:db8::1"])}``.  Other types of
        a known name get NODATA, unknown names NXDOMAIN, both with an SOA whose
        TTL and MINIMUM are *negative_ttl*.  ``set_zone(None)`` restores the
        wildcard default.
        """
        if records is None:
            self._zone = None
            return
        zone: dict[dns.name.Name, tuple[int, list[str]]] = {}
        for name, value in records.items():
            if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int):
                zone[_name(name)] = (value[0], list(value[1]))
            else:
                zone[_name(name)] = (ttl, [str(v) for v in value])
        self._negative_ttl = negative_ttl
        self._zone = zone

    def default_answer(self, query: dns.message.Message) -> dns.message.Message:
        """What the server answers when the handler returns None (or is unset)."""
        if not query.question:
            return make_reply(query, rcode=dns.rcode.FORMERR)
        q = query.question[0]
        if q.name == dns.name.root and q.rdtype == dns.rdatatype.NS:
            return answer(query, [(".", 518400, "NS", "a.root-servers.net.")])
        zone = self._zone
        if zone is None:
            if q.rdtype == dns.rdatatype.A:
                return a_records(query, 1, DEFAULT_TTL)
            return nodata(query)
        neg = self._negative_ttl
        entry = zone.get(q.name)
        if entry is None:
            return nxdomain(query, neg, neg)
        ttl, addrs = entry
        want = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}.get(q.rdtype)
        rrs = [
            (q.name.to_text(), ttl, "A" if want == 4 else "AAAA", a)
            for a in addrs
            if ipaddress.ip_address(a).version == want
        ]
        return answer(query, rrs, aa=True) if rrs else nodata(query, neg, neg)

    # ------------------------------------------------------------ accounting

    @property
    def queries(self) -> list[QueryRecord]:
        """Copy of the received queries, in arrival order."""
        with self._cond:
            return [e.record for e in self._entries]

    @property
    def messages(self) -> list[dns.message.Message]:
        """The parsed queries (same order as :attr:`queries`)."""
        with self._cond:
            return [e.message for e in self._entries]

    @property
    def peers(self) -> list[Any]:
        """The client socket addresses (same order as :attr:`queries`)."""
        with self._cond:
            return [e.peer for e in self._entries]

    @property
    def tcp_connections_accepted(self) -> int:
        with self._cond:
            return self._tcp_accepted

    @property
    def malformed(self) -> int:
        """Number of received messages that did not parse as DNS."""
        with self._cond:
            return self._malformed

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised by the handler (also re-raised by ``__exit__``)."""
        with self._cond:
            return list(self._errors)

    def count(self, proto: str | None = None) -> int:
        with self._cond:
            return sum(1 for e in self._entries if proto is None or e.record.proto == proto)

    def reset(self) -> None:
        """Forget queries, counters and errors (keeps handler, zone and options)."""
        with self._cond:
            self._entries.clear()
            self._tcp_accepted = 0
            self._malformed = 0
            self._errors.clear()

    def wait_for(self, n: int, timeout: float = 2.0) -> list[QueryRecord]:
        """Block until at least *n* queries arrived; return them. Raises TimeoutError.

        Do not call this from a coroutine running the code under test: use
        :meth:`wait_for_async` there.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._entries) >= n, timeout):
                got = [e.record for e in self._entries]
                raise TimeoutError(f"expected {n} queries within {timeout}s, got {len(got)}: {got}")
            return [e.record for e in self._entries]

    async def wait_for_async(self, n: int, timeout: float = 2.0) -> list[QueryRecord]:
        """Like :meth:`wait_for` but yields to the caller's event loop while waiting."""
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if time.monotonic() >= deadline:
                got = self.queries
                raise TimeoutError(f"expected {n} queries within {timeout}s, got {len(got)}: {got}")
            await asyncio.sleep(0.005)
        return self.queries
