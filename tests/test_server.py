"""Core server behaviour over real sockets: preflight checks, routing, OPT, TCP framing."""

from __future__ import annotations

import socket
import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import pytest
from harness import Running, query, raw

# A chain that falls off its end answers SERVFAIL: "errors" alone gives that, so these tests
# need no upstream. Two zones let routing be seen (REFUSED outside both).
COREFILE = """
example.org:0 {
    bind 127.0.0.1
    errors
}
"""


@pytest.fixture(scope="module")
def srv() -> Running:
    with Running(COREFILE) as s:
        yield s


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0,
           ar: int = 0) -> bytes:
    return struct.pack(">HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x07example\x03org\x00\x00\x01\x00\x01"


def test_chain_falling_off_its_end_answers_servfail(srv: Running) -> None:
    r = srv.query("www.example.org.", "A")
    assert r.rcode() == dns.rcode.SERVFAIL
    assert r.flags & dns.flags.QR


def test_name_outside_every_zone_is_refused(srv: Running) -> None:
    assert srv.query("example.com.", "A").rcode() == dns.rcode.REFUSED


def test_zone_match_is_case_insensitive(srv: Running) -> None:
    r = srv.query("WWW.Example.ORG.", "A")
    assert r.rcode() == dns.rcode.SERVFAIL
    assert str(r.question[0].name) == "WWW.Example.ORG."


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x12\x34\x01", id="short-header"),
        pytest.param(header(flags=0x8100) + QUESTION, id="qr-set-response"),
    ],
)
def test_unreadable_or_response_datagrams_get_no_reply(srv: Running, data: bytes) -> None:
    assert raw(srv.port, data, timeout=0.3) is None
    # and the server still answers afterwards
    assert srv.query("example.org.", "A").rcode() == dns.rcode.SERVFAIL


@pytest.mark.parametrize(
    ("data", "rcode"),
    [
        pytest.param(header(flags=0x1000) + QUESTION, dns.rcode.NOTIMP, id="opcode-status"),
        pytest.param(header(flags=0x2800) + QUESTION, dns.rcode.NOTIMP, id="opcode-update"),
        pytest.param(header(qd=0), dns.rcode.FORMERR, id="qdcount-0"),
        pytest.param(header(qd=2) + QUESTION + QUESTION, dns.rcode.FORMERR, id="qdcount-2"),
        pytest.param(header(an=1) + QUESTION, dns.rcode.FORMERR, id="answer-in-query"),
        pytest.param(header(ar=2) + QUESTION, dns.rcode.FORMERR, id="two-additional"),
        pytest.param(header() + b"\x07example", dns.rcode.FORMERR, id="name-overrun"),
        pytest.param(header() + b"\xc0\x0c\x00\x01\x00\x01", dns.rcode.FORMERR,
                     id="pointer-in-question"),
        pytest.param(header() + QUESTION + b"junk", dns.rcode.FORMERR, id="trailing-bytes"),
        pytest.param(header() + b"\x07example\x03org\x00\x00\x01\x00\x03", dns.rcode.REFUSED,
                     id="class-chaos"),
    ],
)
def test_preflight_rcodes(srv: Running, data: bytes, rcode: int) -> None:
    reply = raw(srv.port, data)
    assert reply is not None
    assert reply[:2] == b"\x12\x34"
    assert reply[2] & 0x80  # QR
    assert reply[3] & 0x0F == rcode


def test_badvers_answers_with_a_version_0_opt(srv: Running) -> None:
    q = dns.message.make_query("example.org.", "A", use_edns=1)
    reply = raw(srv.port, q.to_wire())
    assert reply is not None
    r = dns.message.from_wire(reply)
    assert r.rcode() == dns.rcode.BADVERS
    assert r.edns == 0


@pytest.mark.parametrize("do", [False, True])
def test_reply_opt_echoes_client_size_do_and_cookie(srv: Running, do: bool) -> None:
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)
    r = srv.query("a.example.org.", "A", use_edns=0, payload=1400, want_dnssec=do,
                  options=[cookie])
    assert r.edns == 0
    assert r.payload == 1400
    assert bool(r.ednsflags & dns.flags.DO) == do
    assert [o.otype for o in r.options] == [dns.edns.OptionType.COOKIE]
    assert r.options[0].to_wire() == b"\x01" * 8


def test_no_opt_in_query_means_no_opt_in_reply(srv: Running) -> None:
    r = srv.query("a.example.org.", "A")
    assert r.edns == -1


def test_tcp_pipelined_queries_on_one_connection(srv: Running) -> None:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
    try:
        ids = []
        payload = b""
        for i in range(5):
            q = dns.message.make_query(f"n{i}.example.org.", "A")
            ids.append(q.id)
            w = q.to_wire()
            payload += len(w).to_bytes(2, "big") + w
        s.sendall(payload)  # all five before reading any answer
        got = []
        buf = b""
        while len(got) < 5:
            chunk = s.recv(65535)
            assert chunk, "connection closed early"
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                n = int.from_bytes(buf[:2], "big")
                got.append(dns.message.from_wire(buf[2 : 2 + n]))
                buf = buf[2 + n :]
        assert sorted(m.id for m in got) == sorted(ids)
        assert all(m.rcode() == dns.rcode.SERVFAIL for m in got)
    finally:
        s.close()


def test_tcp_query_via_dnspython(srv: Running) -> None:
    assert srv.query("example.com.", "A", tcp=True).rcode() == dns.rcode.REFUSED


def test_tcp_garbage_frame_is_dropped_and_connection_survives(srv: Running) -> None:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
    try:
        junk = b"\x00\x01\x02"
        s.sendall(len(junk).to_bytes(2, "big") + junk)
        q = dns.message.make_query("example.com.", "A").to_wire()
        s.sendall(len(q).to_bytes(2, "big") + q)
        n = int.from_bytes(s.recv(2), "big")
        r = dns.message.from_wire(s.recv(n))
        assert r.rcode() == dns.rcode.REFUSED
    finally:
        s.close()


def test_longest_zone_wins_between_blocks() -> None:
    # keys without a port take -dns.port, here 0: one ephemeral listener for all three blocks
    corefile = """
    example.org sub.example.org {
        bind 127.0.0.1
        errors
    }
    a.example.org {
        bind 127.0.0.1
    }
    """
    with Running(corefile, dns_port=0) as s:
        assert len(s.server.listeners) == 1
        query(s.port, "x.a.example.org.", "A")
        query(s.port, "x.SUB.example.org.", "A")
        query(s.port, "x.example.org.", "A")
        query(s.port, "sub.example.org.", "A")
        counts = {z: sum(zs.requests.values()) for (_, z), zs in s.server.stats.zones.items()}
        assert counts["a.example.org."] == 1
        assert counts["sub.example.org."] == 2
        assert counts["example.org."] == 1


@pytest.mark.parametrize("tcp", [False, True])
def test_repeated_query_shape_answers_each_id(srv: Running, tcp: bool) -> None:
    # The listener memoizes a query's scan by its bytes minus the ID: every reply must still
    # carry its own query's ID (slow path, no cache in this block).
    base = dns.message.make_query("memo.example.org.", "A")
    for qid in (0x0101, 0x0202, 0x0303):
        base.id = qid
        if tcp:
            r = dns.query.tcp(base, "127.0.0.1", port=srv.port, timeout=3)
        else:
            reply = raw(srv.port, base.to_wire())
            assert reply is not None
            r = dns.message.from_wire(reply)
        assert r.id == qid
        assert r.rcode() == dns.rcode.SERVFAIL
