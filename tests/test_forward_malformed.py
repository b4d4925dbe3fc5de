"""forward: a reply with our ID from the upstream's address that cannot be read fails that
attempt at once (next upstream, or SERVFAIL now) and is counted; a readable reply for another
question is a spoof or a stale reply and is ignored (the attempt keeps waiting).

Over the real wire: FakeUpstream scripts the replies, dnspython asks linkdns.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import dns.message
import dns.rcode
import pytest
from fakeupstream import FakeUpstream, Garbage, Multi, Reply, WrongQuestion, a_records
from harness import Running
from test_forward import asked, corefile, sample

MALFORMED = "linkdns_forward_malformed_replies_total"


def header_only(q: dns.message.Message, flags: int = 0x8181, qd: int = 0) -> Garbage:
    """Our ID, then a bare header: ``flags`` (default QR, FORMERR) and ``qd`` questions."""
    return Garbage(struct.pack("!HHHHHH", q.id, flags, qd, 0, 0, 0))


def with_junk_after(q: dns.message.Message) -> Garbage:
    """A valid answer to the question with bytes after the last record."""
    return Garbage(a_records(q, 1).to_wire() + b"\x00\x01\x02")


BAD = [
    pytest.param(lambda q: Garbage.bad_body(q), id="qdcount-65535-random-body"),
    pytest.param(lambda q: Garbage.bad_body(q, qdcount=1, seed=7), id="qdcount-1-random-body"),
    pytest.param(lambda q: Garbage.truncated_body(q), id="answer-cut-short"),
    pytest.param(lambda q: header_only(q, flags=0x8180), id="noerror-without-question"),
    pytest.param(lambda q: Garbage(struct.pack("!HHHHHH", q.id, 0x8185, 0, 1, 0, 0)
                                   + a_records(q, 1).to_wire()[12 + 17:]),
                 id="refused-without-question-with-an-answer"),
    pytest.param(lambda q: header_only(q, qd=2), id="two-questions-missing"),
    pytest.param(lambda q: header_only(q, flags=0x0100, qd=0), id="qr-clear"),
    pytest.param(with_junk_after, id="trailing-bytes"),
]


@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize("bad", BAD)
def test_malformed_reply_fails_the_attempt_at_once(
        up: FakeUpstream, bad: Any, proto: str) -> None:
    up.handler = lambda q, p: bad(q)
    opts = "force_tcp" if proto == "tcp" else ""
    # Default timeouts (2 s per attempt): before the fix this took 4 s.
    with Running(corefile(up, opts=opts)) as srv:
        t0 = time.monotonic()
        r = srv.query("bad.test.")
        took = time.monotonic() - t0
        counted = sample(srv, MALFORMED, to=up.addr)
    assert r.rcode() == dns.rcode.SERVFAIL
    assert took < 1.0
    assert asked(up, "bad.test.", proto) == 2  # one upstream: two attempts, both failed
    assert counted == 2


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_malformed_reply_moves_on_to_the_next_upstream(
        up: FakeUpstream, up2: FakeUpstream, proto: str) -> None:
    up.handler = lambda q, p: Garbage.bad_body(q)
    opts = "policy sequential" + ("\nforce_tcp" if proto == "tcp" else "")
    with Running(corefile(up, up2, opts=opts)) as srv:
        t0 = time.monotonic()
        r = srv.query("next.test.")
        took = time.monotonic() - t0
        counted = (sample(srv, MALFORMED, to=up.addr), sample(srv, MALFORMED, to=up2.addr))
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "192.0.2.1"
    assert took < 1.0
    assert (asked(up, "next.test."), asked(up2, "next.test.")) == (1, 1)
    assert counted == (1, 0)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_reply_for_another_valid_question_is_ignored_not_failed(
        up: FakeUpstream, proto: str) -> None:
    """Same ID, a different well-formed question (spoof or stale): keep waiting, as unbound."""
    up.handler = lambda q, p: Multi(
        WrongQuestion(a_records(q, 1, first="6.6.6.6"), qname="other.test."),
        Reply(a_records(q, 1, first="192.0.2.99"), delay=0.1))
    opts = "force_tcp" if proto == "tcp" else ""
    with Running(corefile(up, opts=opts)) as srv:
        r = srv.query("real.test.")
        counted = sample(srv, MALFORMED, to=up.addr)
    assert r.rcode() == dns.rcode.NOERROR
    assert [rr.address for rr in r.answer[0]] == ["192.0.2.99"]
    assert asked(up, "real.test.") == 1
    assert counted == 0


def test_good_replies_are_not_counted_as_malformed(up: FakeUpstream) -> None:
    up.handler = lambda q, p: Garbage.bad_body(q) if q.question[0].name.to_text() == (
        "bad.test.") else None
    with Running(corefile(up)) as srv:
        assert srv.query("good.test.").rcode() == dns.rcode.NOERROR
        assert sample(srv, MALFORMED, to=up.addr) == 0
        assert srv.query("bad.test.").rcode() == dns.rcode.SERVFAIL
        assert sample(srv, MALFORMED, to=up.addr) == 2


@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize("rcode", [dns.rcode.FORMERR, dns.rcode.NOTAUTH])
def test_error_reply_without_question_is_relayed(up: FakeUpstream, proto: str,
                                                 rcode: int) -> None:
    """QDCOUNT 0 with an error rcode and nothing but a header (nsd's NOTAUTH to an unknown
    TSIG key, a FORMERR): a reply, relayed as it is (unbound accepts it too), not malformed."""
    up.handler = lambda q, p: header_only(q, flags=0x8180 | rcode)
    opts = "force_tcp" if proto == "tcp" else ""
    with Running(corefile(up, opts=opts)) as srv:
        r = srv.query("err.test.", tcp=proto == "tcp")
        counted = sample(srv, MALFORMED, to=up.addr)
    assert r.rcode() == rcode
    assert asked(up, "err.test.") == 1
    assert counted == 0
