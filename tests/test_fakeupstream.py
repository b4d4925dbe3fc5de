"""Pin the behaviour of the fake upstream (tests/fakeupstream.py) with dnspython's client."""

from __future__ import annotations

import socket
import struct
import threading
import time

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from fakeupstream import (
    DEFAULT_GARBAGE,
    CloseTCP,
    Drop,
    FakeUpstream,
    FromWrongPort,
    Garbage,
    Hold,
    Multi,
    QueryRecord,
    Reply,
    Truncated,
    WrongID,
    WrongQuestion,
    a_records,
    answer,
    nodata,
    nxdomain,
    sequence,
    servfail,
    to_wire_uncompressed,
)

T = 3.0  # client timeout for answers that must arrive (generous: a loaded CI machine)


def q(name: str = "www.example.org.", rdtype: str = "A", **kw: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]


def udp_raw(
    up: FakeUpstream, query: dns.message.Message, timeout: float = T
) -> tuple[bytes, tuple[str, int]]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query.to_wire(), up.sockaddr)
        data, addr = s.recvfrom(65535)
        return data, addr


def tcp_connect(up: FakeUpstream) -> socket.socket:
    s = socket.create_connection(up.sockaddr, timeout=T)
    return s


def tcp_send(s: socket.socket, *queries: dns.message.Message) -> None:
    s.sendall(b"".join(m.to_wire(prepend_length=True) for m in queries))


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def tcp_recv(s: socket.socket) -> dns.message.Message:
    (n,) = struct.unpack("!H", recv_exact(s, 2))
    return dns.message.from_wire(recv_exact(s, n))


# ---------------------------------------------------------------- basics


def test_same_port_and_addr(up: FakeUpstream) -> None:
    assert up.port > 0
    assert up.addr == f"127.0.0.1:{up.port}"
    r1 = dns.query.udp(q(), "127.0.0.1", port=up.port, timeout=T)
    r2 = dns.query.tcp(q(), "127.0.0.1", port=up.port, timeout=T)
    assert r1.answer == r2.answer
    assert up.count() == 2


def test_default_answer(up: FakeUpstream) -> None:
    resp = dns.query.udp(q("anything.test."), "127.0.0.1", port=up.port, timeout=T)
    assert resp.rcode() == dns.rcode.NOERROR
    assert resp.flags & dns.flags.RA
    rrset = resp.find_rrset(
        resp.answer, dns.name.from_text("anything.test."), dns.rdataclass.IN, dns.rdatatype.A
    )
    assert rrset.ttl == 60
    assert [r.to_text() for r in rrset] == ["192.0.2.1"]
    # Health probe ". NS"
    resp = dns.query.udp(q(".", "NS"), "127.0.0.1", port=up.port, timeout=T)
    assert resp.rcode() == dns.rcode.NOERROR
    assert resp.answer[0].rdtype == dns.rdatatype.NS
    # Other types: NODATA with SOA
    resp = dns.query.udp(q(rdtype="AAAA"), "127.0.0.1", port=up.port, timeout=T)
    assert resp.rcode() == dns.rcode.NOERROR
    assert not resp.answer
    assert resp.authority[0].rdtype == dns.rdatatype.SOA


def test_set_zone(up: FakeUpstream) -> None:
    up.set_zone(
        {
            "a.example.org": ["192.0.2.10", "192.0.2.11", "2001:db8::1"],
            "b.example.org.": (300, ["192.0.2.12"]),
        },
        negative_ttl=30,
    )

    def ask(name: str, rdtype: str = "A") -> dns.message.Message:
        return dns.query.udp(q(name, rdtype), "127.0.0.1", port=up.port, timeout=T)

    r = ask("A.example.org.")
    assert sorted(rd.to_text() for rd in r.answer[0]) == ["192.0.2.10", "192.0.2.11"]
    assert r.answer[0].ttl == 60 and r.flags & dns.flags.AA
    assert ask("a.example.org.", "AAAA").answer[0][0].to_text() == "2001:db8::1"
    assert ask("b.example.org.").answer[0].ttl == 300
    r = ask("b.example.org.", "TXT")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    r = ask("c.example.org.")
    assert r.rcode() == dns.rcode.NXDOMAIN
    soa = r.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 30 and soa[0].minimum == 30
    assert ask(".", "NS").rcode() == dns.rcode.NOERROR
    up.set_zone(None)
    assert ask("c.example.org.").answer[0][0].to_text() == "192.0.2.1"


def test_builders() -> None:
    query = q("x.sub.example.org.")
    r = nxdomain(query, soa_ttl=100, soa_minimum=20)
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.authority[0].name.to_text() == "example.org."
    assert r.authority[0].ttl == 100 and r.authority[0][0].minimum == 20
    r = nodata(query, soa_ttl=7)
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.authority[0].ttl == 7
    assert servfail(query).rcode() == dns.rcode.SERVFAIL
    r = answer(
        query,
        [
            ("x.sub.example.org.", 300, "CNAME", "y.example.org."),
            ("y.example.org.", 30, "A", "1.2.3.4"),
        ],
        aa=True,
    )
    assert r.flags & dns.flags.AA
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    r = a_records(query, 3, ttl=5)
    assert [rd.to_text() for rd in r.answer[0]] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]


def test_handler_gets_proto_and_message_result(up: FakeUpstream) -> None:
    seen: list[str] = []

    def handler(query: dns.message.Message, proto: str) -> dns.message.Message:
        seen.append(proto)
        return answer(query, [(query.question[0].name.to_text(), 5, "A", "198.51.100.9")])

    up.handler = handler
    r = dns.query.udp(q(), "127.0.0.1", port=up.port, timeout=T)
    assert r.answer[0][0].to_text() == "198.51.100.9"
    dns.query.tcp(q(), "127.0.0.1", port=up.port, timeout=T)
    assert seen == ["udp", "tcp"]
    up.handler = None
    r = dns.query.udp(q(), "127.0.0.1", port=up.port, timeout=T)
    assert r.answer[0][0].to_text() == "192.0.2.1"


# ---------------------------------------------------------------- actions


def test_delay_does_not_block_other_queries(up: FakeUpstream) -> None:
    up.handler = lambda query, proto: (
        Reply(a_records(query, 1), delay=1.0)
        if query.question[0].name.labels[0] == b"slow"
        else None
    )
    result: dict[str, float] = {}

    def slow() -> None:
        t0 = time.monotonic()
        dns.query.udp(q("slow.example."), "127.0.0.1", port=up.port, timeout=5)
        result["slow"] = time.monotonic() - t0

    th = threading.Thread(target=slow)
    th.start()
    up.wait_for(1)
    t0 = time.monotonic()
    dns.query.udp(q("fast.example."), "127.0.0.1", port=up.port, timeout=T)
    fast = time.monotonic() - t0
    th.join(6)
    assert fast < 0.5  # not stuck behind the slow one's 1 s delay
    assert 0.98 <= result["slow"] < 3.0


def test_hold_answers_once_the_gate_opens(up: FakeUpstream) -> None:
    gate = threading.Event()
    up.handler = lambda query, proto: Hold(gate, a_records(query, 2))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(q().to_wire(), up.sockaddr)
        up.wait_for(1)
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.recv(65535)  # held
        gate.set()
        s.settimeout(T)
        assert len(dns.message.from_wire(s.recv(65535)).answer[0]) == 2
    up.handler = lambda query, proto: Hold(threading.Event(), timeout=0.1)  # never opened
    assert dns.query.udp(q(), "127.0.0.1", port=up.port, timeout=T).answer


def test_drop(up: FakeUpstream) -> None:
    up.handler = lambda query, proto: Drop()
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(q(), "127.0.0.1", port=up.port, timeout=0.3)
    up.wait_for(1)  # received (the upstream's thread may lag the client's timeout)
    assert up.count("udp") == 1


def test_garbage(up: FakeUpstream) -> None:
    up.handler = lambda query, proto: Garbage()
    data, _ = udp_raw(up, q())
    assert data == DEFAULT_GARBAGE and len(data) == 7
    with pytest.raises(dns.exception.DNSException):
        dns.message.from_wire(data)


def test_garbage_truncated_body(up: FakeUpstream) -> None:
    up.handler = lambda query, proto: Garbage.truncated_body(query)
    query = q()
    data, _ = udp_raw(up, query)
    assert len(data) > 12
    msg_id, flags, qd, an = struct.unpack("!HHHH", data[:8])
    assert msg_id == query.id and flags & dns.flags.QR and qd == 1 and an == 1
    with pytest.raises(dns.exception.FormError):
        dns.message.from_wire(data)


def test_truncated_over_udp_then_tcp(up: FakeUpstream) -> None:
    up.handler = lambda query, proto: Truncated()
    r = dns.query.udp(q(), "127.0.0.1", port=up.port, timeout=T)
    assert r.flags & dns.flags.TC and not r.answer
    r = dns.query.tcp(q(), "127.0.0.1", port=up.port, timeout=T)
    assert not r.flags & dns.flags.TC and r.answer[0][0].to_text() == "192.0.2.1"
    # explicit TCP answer
    up.handler = lambda query, proto: Truncated(tcp=a_records(query, 30))
    r, used_tcp = dns.query.udp_with_fallback(q(), "127.0.0.1", port=up.port, timeout=T)
    assert used_tcp and len(r.answer[0]) == 30
    assert [rec.proto for rec in up.queries] == ["udp", "tcp", "udp", "tcp"]


def test_wrong_id(up: FakeUpstream) -> None:
    up.handler = lambda query, proto: WrongID()
    query = q()
    data, _ = udp_raw(up, query)
    resp = dns.message.from_wire(data)
    assert resp.id == (query.id + 1) & 0xFFFF
    assert resp.answer[0][0].to_text() == "192.0.2.1"
    up.handler = lambda query, proto: WrongID(servfail(query), id=4242)
    data, _ = udp_raw(up, q())
    assert dns.message.from_wire(data).id == 4242


def test_wrong_question(up: FakeUpstream) -> None:
    up.handler = lambda query, proto: WrongQuestion()
    query = q()
    data, _ = udp_raw(up, query)
    resp = dns.message.from_wire(data)
    assert resp.id == query.id
    assert resp.question[0].name.to_text() == "wrong-question.example."
    up.handler = lambda query, proto: WrongQuestion(qname=None, qtype="AAAA")
    resp = dns.message.from_wire(udp_raw(up, query)[0])
    assert resp.question[0].name == query.question[0].name
    assert resp.question[0].rdtype == dns.rdatatype.AAAA
    # dnspython's client rejects it
    with pytest.raises(dns.query.BadResponse):
        dns.query.udp(query, "127.0.0.1", port=up.port, timeout=T)


def test_from_wrong_port(up: FakeUpstream) -> None:
    up.handler = lambda query, proto: FromWrongPort()
    query = q()
    data, addr = udp_raw(up, query)
    assert addr[0] == "127.0.0.1" and addr[1] != up.port
    resp = dns.message.from_wire(data)
    assert resp.id == query.id and resp.answer
    # over TCP it is a normal answer
    assert dns.query.tcp(q(), "127.0.0.1", port=up.port, timeout=T).answer


def test_multi_wrong_id_then_right_one(up: FakeUpstream) -> None:
    up.handler = lambda query, proto: [WrongID(), Reply(a_records(query, 2), delay=0.05)]
    # dnspython ignores the mismatching datagram and waits for the right one
    r = dns.query.udp(q(), "127.0.0.1", port=up.port, timeout=T, ignore_errors=True)
    assert len(r.answer[0]) == 2
    up.handler = lambda query, proto: Multi(Garbage(), Garbage(b"x" * 20, delay=0.05))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(T)
        s.sendto(q().to_wire(), up.sockaddr)
        assert s.recv(100) == DEFAULT_GARBAGE
        assert s.recv(100) == b"x" * 20


def test_sequence_handler(up: FakeUpstream) -> None:
    up.handler = sequence(Drop(), lambda query, proto: servfail(query), then=None)
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(q(), "127.0.0.1", port=up.port, timeout=0.2)
    assert dns.query.udp(q(), "127.0.0.1", port=up.port, timeout=T).rcode() == dns.rcode.SERVFAIL
    assert dns.query.udp(q(), "127.0.0.1", port=up.port, timeout=T).rcode() == dns.rcode.NOERROR


def test_uncompressed_reply_is_big_and_parses(up: FakeUpstream) -> None:
    query = q("x.example.org.")
    qname_len = len(b"\x01x\x07example\x03org\x00")
    compressed = len(a_records(query, 40).to_wire())
    wire = to_wire_uncompressed(a_records(query, 40))
    assert len(wire) == 12 + (qname_len + 4) + 40 * (qname_len + 10 + 4) == 1191
    assert compressed < len(wire)
    assert len(to_wire_uncompressed(a_records(query, 20))) > 512

    up.handler = lambda query, proto: a_records(query, 40, compress=False)
    data, _ = udp_raw(up, query)  # query without EDNS: still sent whole
    assert len(data) == 1191
    resp = dns.message.from_wire(data)
    assert resp.id == query.id and len(resp.answer[0]) == 40
    r = dns.query.udp(query, "127.0.0.1", port=up.port, timeout=T)
    assert len(r.answer[0]) == 40


def test_edns_accounting_and_respect_udp_size(up: FakeUpstream) -> None:
    up.handler = lambda query, proto: a_records(query, 100)
    query = q(use_edns=0, payload=1232)
    data, _ = udp_raw(up, query)
    assert len(data) > 1232  # sent whole on purpose
    up.respect_udp_size = True
    r = dns.query.udp(query, "127.0.0.1", port=up.port, timeout=T)
    assert r.flags & dns.flags.TC and not r.answer
    r = dns.query.udp(q(), "127.0.0.1", port=up.port, timeout=T)  # no EDNS: 512 limit
    assert r.flags & dns.flags.TC
    up.handler = None
    assert dns.query.udp(q(), "127.0.0.1", port=up.port, timeout=T).answer
    recs = up.queries
    assert recs[0] == QueryRecord("udp", "www.example.org.", "A", True, 1232, query.id)
    assert recs[2].has_edns is False and recs[2].edns_payload is None


# ---------------------------------------------------------------- TCP


def test_tcp_pipelined_out_of_order(up: FakeUpstream) -> None:
    def handler(query: dns.message.Message, proto: str) -> Reply:
        first = query.question[0].name.labels[0]
        return Reply(a_records(query, 1), delay=0.15 if first == b"q0" else 0.0)

    up.handler = handler
    queries = [q(f"q{i}.example.") for i in range(3)]
    with tcp_connect(up) as s:
        tcp_send(s, *queries)
        got = [tcp_recv(s) for _ in queries]
    # the delayed first query is answered last, all on one connection
    assert [m.id for m in got] == [queries[1].id, queries[2].id, queries[0].id]
    assert up.tcp_connections_accepted == 1
    assert up.count("tcp") == 3


def test_tcp_half_close_still_answered(up: FakeUpstream) -> None:
    up.handler = lambda query, proto: Reply(a_records(query, 1), delay=0.05)
    with tcp_connect(up) as s:
        tcp_send(s, q(), q())
        s.shutdown(socket.SHUT_WR)
        assert tcp_recv(s).answer and tcp_recv(s).answer
        assert s.recv(10) == b""


def test_close_tcp(up: FakeUpstream) -> None:
    up.handler = lambda query, proto: CloseTCP()
    with tcp_connect(up) as s:
        tcp_send(s, q())
        assert s.recv(10) == b""
    with pytest.raises((EOFError, ConnectionError)):
        dns.query.tcp(q(), "127.0.0.1", port=up.port, timeout=T)
    up.handler = lambda query, proto: CloseTCP(reset=True)
    with tcp_connect(up) as s:
        tcp_send(s, q())
        with pytest.raises(ConnectionResetError):
            s.recv(10)
    assert up.tcp_connections_accepted == 3


def test_close_tcp_after_each(up: FakeUpstream) -> None:
    up.close_tcp_after_each = True
    with tcp_connect(up) as s:
        tcp_send(s, q(), q())
        assert tcp_recv(s).answer
        assert s.recv(10) == b""
    up.close_tcp_after_each = False
    with tcp_connect(up) as s:
        tcp_send(s, q(), q())
        assert tcp_recv(s).answer and tcp_recv(s).answer
    assert up.tcp_connections_accepted == 2


# ---------------------------------------------------------------- accounting / lifecycle


def test_counting_reset_and_wait_for(up: FakeUpstream) -> None:
    up.handler = lambda query, proto: Drop() if proto == "udp" else None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in ("a.test.", "b.test."):
            s.sendto(q(name, "AAAA").to_wire(), up.sockaddr)
        recs = up.wait_for(2)
    dns.query.tcp(q("c.test."), "127.0.0.1", port=up.port, timeout=T)
    assert [(r.proto, r.qname, r.qtype) for r in recs] == [
        ("udp", "a.test.", "AAAA"),
        ("udp", "b.test.", "AAAA"),
    ]
    assert up.count() == 3 and up.count("udp") == 2 and up.count("tcp") == 1
    assert up.messages[2].question[0].name.to_text() == "c.test."
    assert up.peers[0][0] == "127.0.0.1"
    up.reset()
    assert up.queries == [] and up.count() == 0 and up.tcp_connections_accepted == 0
    with pytest.raises(TimeoutError):
        up.wait_for(1, timeout=0.05)


def test_malformed_query_counted() -> None:
    with FakeUpstream() as up, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"junk", up.sockaddr)
        deadline = time.monotonic() + 5
        while up.malformed == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert up.malformed == 1 and up.count() == 0


def test_handler_error_surfaces_on_exit() -> None:
    def bad(query: dns.message.Message, proto: str) -> None:
        raise ValueError("boom")

    with pytest.raises(RuntimeError, match="handler raised"), FakeUpstream(handler=bad) as up:
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(q(), "127.0.0.1", port=up.port, timeout=0.1)
        deadline = time.monotonic() + 5
        while not up.errors and time.monotonic() < deadline:
            time.sleep(0.005)
        assert isinstance(up.errors[0], ValueError)


def test_stop_is_fast_with_pending_work() -> None:
    up = FakeUpstream(handler=lambda query, proto: Reply(a_records(query, 1), delay=10))
    up.start()
    port = up.port
    s = tcp_connect(up)
    try:
        tcp_send(s, q())
        up.wait_for(1)
        t0 = time.monotonic()
        up.stop()
        assert time.monotonic() - t0 < 1.0
        up.stop()  # idempotent
    finally:
        s.close()
    # ports are released
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", port))


def test_restart_and_two_servers() -> None:
    with FakeUpstream() as a, FakeUpstream() as b:
        assert a.port != b.port
        assert dns.query.udp(q(), "127.0.0.1", port=a.port, timeout=T).answer
        assert dns.query.udp(q(), "127.0.0.1", port=b.port, timeout=T).answer
    a.start()
    try:
        assert dns.query.tcp(q(), "127.0.0.1", port=a.port, timeout=T).answer
    finally:
        a.stop()


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_available(), reason="no ::1")
def test_ipv6() -> None:
    with FakeUpstream("::1") as up:
        assert up.addr == f"[::1]:{up.port}"
        assert dns.query.udp(q(), "::1", port=up.port, timeout=T).answer
        assert dns.query.tcp(q(), "::1", port=up.port, timeout=T).answer
        up.handler = lambda query, proto: FromWrongPort()
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.settimeout(T)
            s.sendto(q().to_wire(), up.sockaddr)
            _, addr = s.recvfrom(65535)
            assert addr[1] != up.port


async def test_usable_from_async_tests(up: FakeUpstream) -> None:
    up.handler = lambda query, proto: Reply(a_records(query, 1), delay=0.05)
    r = await dns.asyncquery.udp(q(), "127.0.0.1", port=up.port, timeout=T)
    assert r.answer
    r = await dns.asyncquery.tcp(q(), "127.0.0.1", port=up.port, timeout=T)
    assert r.answer
    recs = await up.wait_for_async(2)
    assert [rec.proto for rec in recs] == ["udp", "tcp"]
