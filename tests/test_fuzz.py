"""Random and mutated datagrams never crash the server; it still answers afterwards."""

from __future__ import annotations

import socket

import dns.message
import dns.opcode
import dns.rcode
import pytest
from harness import Running
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

SEED_QUERIES = [
    dns.message.make_query("example.org.", "A").to_wire(),
    dns.message.make_query("www.example.org.", "AAAA", use_edns=0, want_dnssec=True).to_wire(),
    dns.message.make_query("x.example.org.", "TXT", use_edns=0, payload=4096).to_wire(),
]


@pytest.fixture(scope="module")
def srv() -> Running:
    with Running("example.org:0 {\n bind 127.0.0.1\n log\n errors\n}\n") as s:
        yield s


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    base = bytearray(draw(st.sampled_from(SEED_QUERIES)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        if not base:
            break
        i = draw(st.integers(0, len(base) - 1))
        if op == "flip":
            base[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del base[i:]
        elif op == "insert":
            base[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            base[i] = draw(st.integers(0, 255))
    return bytes(base)


PROBE = dns.message.make_query("probe.example.org.", "A")


def _as_update(q: dns.message.Message) -> bytes:
    """``q`` with its opcode set to UPDATE (5): the zone section then has type A, not SOA."""
    w = bytearray(q.to_wire())
    w[2] = (w[2] & 0x87) | (dns.opcode.UPDATE << 3)
    return bytes(w)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=600), mutated()))
@example(data=_as_update(dns.message.make_query("u.example.org.", "A")))
def test_garbage_never_crashes_and_server_keeps_answering(srv: Running, data: bytes) -> None:
    # Send the datagram, then a valid probe: the probe's answer proves the server lives, and
    # anything else that comes back must be a well-formed response to the datagram.
    probe = PROBE.to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        s.sendto(data, ("127.0.0.1", srv.port))
        s.sendto(probe, ("127.0.0.1", srv.port))
        seen_probe = False
        while not seen_probe:
            reply = s.recv(65535)
            if (reply[2] >> 3) & 0xF == dns.opcode.UPDATE:
                # RFC 2136 §3.8 lets a reply copy the request's zone section; dnspython
                # rejects a zone section that is not of type SOA, so check the header only.
                assert reply[:2] == data[:2] and reply[2] & 0x80
                assert reply[3] & 0xF == dns.rcode.NOTIMP
                continue
            m = dns.message.from_wire(reply)
            if reply[:2] == probe[:2] and m.question and m.question[0].name == PROBE.question[0].name:
                seen_probe = True
                assert m.rcode() == dns.rcode.SERVFAIL
            else:
                assert reply[:2] == data[:2]
                assert reply[2] & 0x80
    assert srv.server.stats.panics == 0


def test_valid_query_after_the_storm(srv: Running) -> None:
    assert srv.query("ok.example.org.", "A").rcode() == dns.rcode.SERVFAIL
    assert srv.server.stats.panics == 0
