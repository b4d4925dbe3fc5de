"""Fuzz the whole daemon from outside: random and mutated datagrams and TCP frames,
compression-pointer loops, names over 255 bytes, bad OPT lengths. No input crashes it, no
reply carries an ID other than its query's (nor answers one query twice), no exception
reaches coredns_panics_total, and a good query is answered after. Seeded and bounded."""

from __future__ import annotations

import random
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest
from daemon import Daemon
from fakeupstream import FakeUpstream
from harness import query

Gen = Callable[[random.Random], bytes]


def good(rnd: random.Random) -> bytes:
    name = rnd.choice(["a.example.", "b.example.org.", "x.y.z.test.", "."])
    q = dns.message.make_query(name, rnd.choice(["A", "AAAA", "MX", "TXT", "NS", "SOA"]),
                               use_edns=rnd.choice([None, 0]), want_dnssec=rnd.random() < 0.3)
    return q.to_wire()


def random_bytes(rnd: random.Random) -> bytes:
    return rnd.randbytes(rnd.choice([0, 1, 2, 5, 11, 12, 13, 20, 40, 100, 512, 1400]))


def mutated(rnd: random.Random) -> bytes:
    b = bytearray(good(rnd))
    for _ in range(rnd.randint(1, 6)):
        op = rnd.random()
        if op < 0.4 and b:
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        elif op < 0.6 and b:
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        elif op < 0.75:
            del b[rnd.randrange(len(b) + 1):]
        elif op < 0.9:
            b += rnd.randbytes(rnd.randint(1, 30))
        else:  # header counts
            off = rnd.choice([4, 6, 8, 10])
            if len(b) >= off + 2:
                b[off : off + 2] = struct.pack("!H", rnd.choice([0, 1, 2, 255, 65535]))
    return bytes(b)


def header(rnd: random.Random, qd: int = 1, ar: int = 0, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", rnd.randrange(65536), flags, qd, 0, 0, ar)


def pointer_loop(rnd: random.Random) -> bytes:
    name = rnd.choice([
        b"\xc0\x0c",  # points at itself
        b"\x01a\xc0\x0c",  # a label, then back to the start
        b"\xc0\x0e\xc0\x0c",  # two pointers pointing at each other
        b"\x01a\xc0\x10\x01b\xc0\x0c",
        b"\xc0\xff",  # beyond the message
    ])
    return header(rnd) + name + b"\x00\x01\x00\x01"


def long_name(rnd: random.Random) -> bytes:
    labels = b"".join(b"\x3f" + b"a" * 63 for _ in range(rnd.randint(4, 6)))  # 256..384 bytes
    return header(rnd) + labels + b"\x00\x00\x01\x00\x01"


def bad_opt(rnd: random.Random) -> bytes:
    q = header(rnd, ar=rnd.choice([1, 2])) + b"\x01a\x07example\x00\x00\x01\x00\x01"
    rdata = rnd.choice([
        b"\x00\x0a\x00\x08" + b"\x01\x02",  # COOKIE option claims 8 bytes, has 2
        b"\x00\x0a\x00\x03abc",  # COOKIE of a bad length
        b"\x00\x08\xff\xff",  # ECS claiming 65535 bytes
        b"\x00",  # half an option code
        rnd.randbytes(rnd.randint(0, 20)),
    ])
    rdlen = rnd.choice([len(rdata), len(rdata) + 7, 0, 65535])
    owner = rnd.choice([b"\x00", b"\x01x\x00", b"\xc0\x0c"])
    opt = owner + struct.pack("!HHIH", 41, rnd.choice([512, 0, 65535]),
                              rnd.choice([0, 0x8000, 0x01000000]), rdlen) + rdata
    return q + opt * (1 if rnd.random() < 0.8 else 2)


GENERATORS: list[Gen] = [random_bytes, mutated, mutated, pointer_loop, long_name, bad_opt, good]


def cases(seed: int, n: int) -> Iterator[bytes]:
    rnd = random.Random(seed)
    for _ in range(n):
        yield rnd.choice(GENERATORS)(rnd)


def with_id(data: bytes, qid: int) -> bytes:
    return struct.pack("!H", qid) + data[2:] if len(data) >= 2 else data


def check_reply(reply: bytes, sent: dict[int, bytes], answered: set[int]) -> None:
    assert len(reply) >= 12, reply
    qid = struct.unpack("!H", reply[:2])[0]
    assert qid in sent, f"reply with ID {qid} to no query: {reply[:40].hex()}"
    assert qid not in answered, f"two replies to query {qid}: {sent[qid].hex()}"
    assert reply[2] & 0x80, "a reply without QR"
    answered.add(qid)


@pytest.fixture
def daemon(tmp_path: Path, up: FakeUpstream) -> Iterator[Daemon]:
    body = f"    cache 30\n    forward . {up.addr} {{\n        read_timeout 200ms\n" \
           "        query_timeout 500ms\n    }"
    with Daemon(tmp_path, body) as d:
        yield d


def fuzz_udp(d: Daemon, seed: int, n: int, batch: int = 500) -> int:
    """Send ``n`` cases in batches, each datagram with its own ID; check every reply."""
    replies = 0
    gen = cases(seed, n)
    for b in range(0, n, batch):
        sent: dict[int, bytes] = {}
        answered: set[int] = set()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            for i, data in enumerate(gen):
                qid = b + i + 1
                data = with_id(data, qid)
                if len(data) >= 2:
                    sent[qid] = data
                s.sendto(data, ("127.0.0.1", d.port))
                if i + 1 == batch:
                    break
            quiet = time.monotonic() + 0.6
            while time.monotonic() < quiet:
                if select.select([s], [], [], 0.05)[0]:
                    check_reply(s.recv(65535), sent, answered)
                    quiet = time.monotonic() + 0.6
        replies += len(answered)
    return replies


def fuzz_tcp(d: Daemon, seed: int, n: int, per_conn: int = 150) -> int:
    """Length-prefixed cases pipelined on connections of ``per_conn`` frames each."""
    rnd = random.Random(seed)
    replies = 0
    gen = cases(seed, n)
    for c in range(0, n, per_conn):
        sent: dict[int, bytes] = {}
        answered: set[int] = set()
        payload = b""
        for i, data in enumerate(gen):
            qid = c + i + 1
            data = with_id(data, qid)
            if len(data) >= 2:
                sent[qid] = data
            payload += struct.pack("!H", len(data)) + data
            if i + 1 == per_conn:
                break
        with socket.create_connection(("127.0.0.1", d.port), timeout=3) as s:
            s.sendall(payload)
            if rnd.random() < 0.3:  # end with a lying length prefix
                s.sendall(b"\x40\x00" + rnd.randbytes(rnd.randint(0, 30)))
            s.settimeout(0.6)
            buf = b""
            try:
                while chunk := s.recv(65535):
                    buf += chunk
                    while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                        k = struct.unpack("!H", buf[:2])[0]
                        check_reply(buf[2 : 2 + k], sent, answered)
                        buf = buf[2 + k :]
            except (TimeoutError, ConnectionResetError):
                pass
        replies += len(answered)
    return replies


def test_fuzz_the_daemon_over_udp_and_tcp(daemon: Daemon) -> None:
    t0 = time.monotonic()
    udp = fuzz_udp(daemon, 1, 3000)
    tcp = fuzz_tcp(daemon, 2, 600)
    assert daemon.alive(), daemon.output()
    assert udp > 300 and tcp > 60  # replies were checked, not only silence
    # still serving, and no exception reached the guards
    assert query(daemon.port, "after.example.").rcode() == dns.rcode.NOERROR
    assert query(daemon.port, "after.example.", tcp=True).rcode() == dns.rcode.NOERROR
    assert daemon.metric("coredns_panics_total") == 0, daemon.output()
    assert "Traceback" not in daemon.output(), daemon.output()
    assert time.monotonic() - t0 < 60
