"""Helpers for the fault suite: a linkdns server in front of a FakeUpstream, client load on
loopback that keeps every query's fate (answer, rcode, time) and the "nothing lost" check."""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass

import dns.message
import dns.rdatatype
from harness import Running

#: forward timeouts short enough for a suite that waits them out many times
FAST_FORWARD = "read_timeout 300ms\n        query_timeout 1s"


def corefile(up_addr: str, cache: str = "cache 60", forward: str = FAST_FORWARD) -> str:
    return f"""
.:0 {{
    bind 127.0.0.1
    {cache}
    forward . {up_addr} {{
        {forward}
    }}
}}
"""


@dataclass
class Result:
    rcode: int
    addrs: list[str]
    secs: float
    msg: dns.message.Message


def _parse(data: bytes) -> dns.message.Message:
    return dns.message.from_wire(data, ignore_trailing=True)


def _result(m: dns.message.Message, t0: float) -> Result:
    addrs = [rd.to_text() for rr in m.answer if rr.rdtype in (1, 28) for rd in rr]
    return Result(m.rcode(), addrs, time.monotonic() - t0, m)


def blast(port: int, names: list[str], rdtype: str = "A", *, timeout: float = 3.0,
          host: str = "127.0.0.1") -> list[Result | None]:
    """Send one UDP query per name at once (distinct IDs, one socket); wait up to ``timeout``
    for all the replies. The result per name, or None when no reply came (lost)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    out: list[Result | None] = [None] * len(names)
    by_id: dict[int, int] = {}
    try:
        t0 = time.monotonic()
        for i, name in enumerate(names):
            q = dns.message.make_query(name, rdtype)
            q.id = i + 1
            by_id[q.id] = i
            s.sendto(q.to_wire(), (host, port))
        deadline = t0 + timeout
        poll = select.poll()  # not select(): fds above 1024 in tests with many sockets
        poll.register(s, select.POLLIN)
        while by_id and (left := deadline - time.monotonic()) > 0:
            if not poll.poll(left * 1000):
                break
            data = s.recv(65535)
            m = _parse(data)
            i = by_id.pop(m.id, -1)
            assert i >= 0, f"reply with an ID nobody asked for: {m.id}"
            assert m.question and m.question[0].name.to_text().lower() == names[i].lower()
            out[i] = _result(m, t0)
    finally:
        s.close()
    return out


def blast_tcp(port: int, names: list[str], rdtype: str = "A", *, timeout: float = 3.0,
              host: str = "127.0.0.1") -> list[Result | None]:
    """As :func:`blast`, pipelined on one TCP connection."""
    out: list[Result | None] = [None] * len(names)
    by_id: dict[int, int] = {}
    with socket.create_connection((host, port), timeout=timeout) as s:
        t0 = time.monotonic()
        wire = b""
        for i, name in enumerate(names):
            q = dns.message.make_query(name, rdtype)
            q.id = i + 1
            by_id[q.id] = i
            w = q.to_wire()
            wire += struct.pack("!H", len(w)) + w
        s.sendall(wire)
        buf = b""
        deadline = t0 + timeout
        while by_id and (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                chunk = s.recv(65535)
            except TimeoutError:
                break
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                m = _parse(buf[2 : 2 + n])
                buf = buf[2 + n :]
                i = by_id.pop(m.id, -1)
                assert i >= 0, f"reply with an ID nobody asked for: {m.id}"
                out[i] = _result(m, t0)
    return out


def drops(srv: Running) -> int:
    """Queries this server counted as received and not answered, all reasons."""
    return sum(srv.server.stats.drops.values())


def assert_nothing_lost(results: list[Result | None], srv: Running, drops_before: int = 0
                        ) -> None:
    """Every query answered, or counted as dropped."""
    lost = sum(r is None for r in results)
    assert lost == drops(srv) - drops_before, (
        f"{lost} queries got no reply, {drops(srv) - drops_before} counted as dropped")


def rcodes(results: list[Result | None]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in results:
        k = -1 if r is None else r.rcode
        out[k] = out.get(k, 0) + 1
    return out


def rdtype(name: str) -> int:
    return int(dns.rdatatype.from_text(name))
