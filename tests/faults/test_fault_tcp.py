"""TCP abuse: idle connections, slow senders, half-sent frames, length prefixes larger than what
follows, thousands of connections, a client that never reads. The limits and timeouts hold,
UDP service is unaffected and a new TCP client is still served."""

from __future__ import annotations

import resource
import socket
import struct
import time
from collections.abc import Iterator

import dns.message
import dns.rcode
import pytest
from fakeupstream import FakeUpstream
from faultlib import blast, blast_tcp, corefile, rcodes
from harness import Running

from linkdns.server import tcp


@pytest.fixture
def srv(up: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    monkeypatch.setattr(tcp, "TCP_IDLE_TIMEOUT", 0.6)
    monkeypatch.setattr(tcp, "TCP_READ_TIMEOUT", 0.4)
    with Running(corefile(up.addr)) as s:
        yield s


def frame(name: str, qid: int = 1) -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    w = q.to_wire()
    return struct.pack("!H", len(w)) + w


def closed_after(s: socket.socket, limit: float) -> float:
    """Seconds until the server closed ``s`` (reads to EOF; fails past ``limit``)."""
    t0 = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


def still_serving(srv: Running) -> None:
    """UDP answers at once and a new TCP client is served."""
    res = blast(srv.port, ["udp.example."], timeout=1)
    assert rcodes(res) == {dns.rcode.NOERROR: 1}
    assert res[0] is not None and res[0].secs < 0.5
    assert rcodes(blast_tcp(srv.port, ["newtcp.example."], timeout=2)) == {dns.rcode.NOERROR: 1}


def tcp_drops(srv: Running, reason: str) -> int:
    (ln,) = srv.server.listeners.values()
    return srv.server.stats.drops.get((ln.name, reason), 0)


def test_idle_connections_are_closed_after_the_idle_timeout(srv: Running) -> None:
    socks = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(100)]
    still_serving(srv)
    for s in socks:
        assert closed_after(s, 3) < 2.5
        s.close()
    assert tcp_drops(srv, "tcp_timeout") == 0  # nothing was begun: nothing lost


def test_a_connection_answering_keeps_going_past_the_idle_timeout(srv: Running) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=3) as s:
        for i in range(4):  # 4 x 0.3 s > the 0.6 s idle timeout, never idle that long
            s.sendall(frame(f"k{i}.example."))
            n = struct.unpack("!H", s.recv(2))[0]
            assert dns.message.from_wire(s.recv(n)).rcode() == dns.rcode.NOERROR
            time.sleep(0.3)


def test_slow_sender_is_cut_at_the_read_timeout(srv: Running) -> None:
    """One byte every 50 ms keeps the connection busy but the frame never completes in time:
    closed after TCP_READ_TIMEOUT (0.4 s here), not kept alive by the trickle."""
    data = frame("slow.example.")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=3) as s:
        t0 = time.monotonic()
        try:
            for b in data:
                s.sendall(bytes([b]))
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert closed_after(s, 3) + (time.monotonic() - t0) < 2.0
    assert tcp_drops(srv, "tcp_timeout") == 1
    still_serving(srv)


@pytest.mark.parametrize("data", [
    pytest.param(b"\x00", id="half-a-length-prefix"),
    pytest.param(b"\xff\xff" + bytes(100), id="prefix-larger-than-what-follows"),
    pytest.param(frame("ok.example.")[:20], id="frame-cut-short"),
])
def test_half_sent_frame_is_closed_counted_and_unanswered(srv: Running, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=3) as s:
        s.sendall(data)
        s.settimeout(3)
        assert s.recv(4096) == b""  # no reply, closed
    assert tcp_drops(srv, "tcp_timeout") == 1
    still_serving(srv)


def test_pipelined_frame_then_half_frame_answers_the_whole_one(srv: Running) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=3) as s:
        s.sendall(frame("whole.example.") + b"\x00\x40\x12")
        n = struct.unpack("!H", s.recv(2))[0]
        assert dns.message.from_wire(s.recv(n)).question[0].name.to_text() == "whole.example."
        assert closed_after(s, 3) < 2.5


def test_thousands_of_connections(srv: Running) -> None:
    """More connections than the limit (1000, or half the fd limit): the server keeps at most
    its limit open, closing the longest idle to make room; UDP and new TCP clients served."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1500  # client and server side live in this process: 2 fds per connection
    if soft < 2 * want + 300 and hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * want + 300), hard))
    n = min(want, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200) // 2)
    assert n >= 300, "ulimit -n too low for this test"
    (ln,) = srv.server.listeners.values()
    if ln.tcp_max >= n:  # a hard fd limit under ~2300: go over a lower connection limit
        srv.run(lambda: setattr(ln, "tcp_max", n * 2 // 3))
    limit = ln.tcp_max
    socks = []
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            if i % 3 == 0:
                s.sendall(b"\x00\x40")  # a frame begun: these must not outlive the limits
            socks.append(s)
        assert srv.run(lambda: len(ln.tcp_conns)) <= limit
        still_serving(srv)
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 5
    while srv.run(lambda: len(ln.tcp_conns)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.run(lambda: len(ln.tcp_conns)) == 0


def test_client_that_never_reads_is_not_buffered_without_bound(srv: Running) -> None:
    """100,000 pipelined cache hits and no reads: the server stops reading that client while
    its write buffer is full (memory bounded by one read's worth of replies), and answers
    every query once the client reads."""
    n = 100_000
    assert rcodes(blast(srv.port, ["pipe.example."])) == {dns.rcode.NOERROR: 1}  # cached
    one = frame("pipe.example.")
    payload = b"".join(one[:2] + struct.pack("!H", i & 0xFFFF) + one[4:] for i in range(n))
    (ln,) = srv.server.listeners.values()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 2
        while sent < len(payload) and time.monotonic() < deadline:
            try:
                sent += s.send(payload[sent:])
            except BlockingIOError:
                time.sleep(0.01)
        time.sleep(0.2)
        state = srv.run(lambda: [(c.transport.get_write_buffer_size(), c.transport.is_reading())
                                 for c in ln.tcp_conns if c.transport is not None])
        assert len(state) == 1
        size, reading = state[0]
        assert size < 1 << 20 and not reading, state
        still_serving(srv)
        # now read: every query gets its answer
        got, buf = 0, b""
        deadline = time.monotonic() + 20
        while got < n and time.monotonic() < deadline:
            if sent < len(payload):
                try:
                    sent += s.send(payload[sent:])
                except BlockingIOError:
                    pass
            try:
                buf += s.recv(1 << 16)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                k = struct.unpack("!H", buf[:2])[0]
                assert buf[2 + 3] & 0xF == 0
                buf = buf[2 + k :]
                got += 1
        assert got == n
