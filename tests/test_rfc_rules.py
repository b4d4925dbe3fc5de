"""Protocol rules, one test per rule (issue 11, deliverable 2), over the real wire.

* RFC 2308 §5: a denial is cached for min(SOA TTL, SOA MINIMUM), then the cache's ``denial``
  floor and cap apply.
* RFC 1035 §4.1.1 / RFC 6891 §7: error replies linkdns writes itself keep the client's ID,
  its question, RD (and CD) for a QUERY, and an OPT when the query had one; RA as in every
  other linkdns reply; for another opcode (NOTIMP) RD/RA/CD are clear (defined for QUERY only).
* A relayed upstream reply without RA (an authoritative server's REFUSED) gets RA.
* RFC 7873 §5.2.2: a COOKIE option whose length is not 8 nor 16-40 is answered FORMERR.
* RFC 8945 §5.5: a signed query (TSIG) is forwarded unchanged, its reply relayed, never cached.
"""

from __future__ import annotations

import socket
import struct
import threading

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import pytest
from fakeupstream import FakeUpstream, a_records, make_reply, nodata, nxdomain
from harness import Running
from test_cache import cache_server, raw_exchange, ttls
from test_forward import corefile, dead_port

# -- RFC 2308 §5: negative TTL -----------------------------------------------------------------


@pytest.mark.parametrize(("soa_ttl", "minimum", "cache", "want"), [
    pytest.param(3600, 10, "cache", 10, id="rfc2308-5-minimum-below-soa-ttl"),
    pytest.param(30, 300, "cache", 30, id="rfc2308-5-soa-ttl-below-minimum"),
    pytest.param(3600, 100, "cache {\n denial 1000 20\n }", 20, id="denial-cap-after-rfc2308"),
    pytest.param(3600, 10, "cache {\n denial 1000 3600 40\n }", 40,
                 id="denial-floor-after-rfc2308"),
])
@pytest.mark.parametrize("kind", ["nxdomain", "nodata"])
def test_negative_ttl_is_min_of_soa_ttl_and_minimum(up: FakeUpstream, soa_ttl: int,
                                                    minimum: int, cache: str, want: int,
                                                    kind: str) -> None:
    deny = nxdomain if kind == "nxdomain" else nodata
    up.handler = lambda q, p: deny(q, soa_ttl, minimum, zone="test.")
    with cache_server(up, cache) as srv:
        first = srv.query("neg.test.")
        srv.server.clock.advance(want - 1)
        still = srv.query("neg.test.")
        asked_before_expiry = up.count()
        srv.server.clock.advance(2)
        srv.query("neg.test.")
        asked_after_expiry = up.count()
    rcode = dns.rcode.NXDOMAIN if kind == "nxdomain" else dns.rcode.NOERROR
    assert first.rcode() == rcode and ttls(first) == [want]
    assert ttls(still) == [1]
    assert (asked_before_expiry, asked_after_expiry) == (1, 2)


# -- error replies linkdns writes itself ------------------------------------------------------

QNAME = b"\x07example\x03org\x00"


def query(flags: int = 0x0100, qd: int = 1, an: int = 0, opt: bytes = b"", qclass: int = 1,
          body: bytes | None = None) -> bytes:
    """ID 0x1234; ``body`` replaces the question (default example.org. A)."""
    q = QNAME + struct.pack("!HH", 1, qclass) if body is None else body
    ar = 1 if opt else 0
    return struct.pack("!HHHHHH", 0x1234, flags, qd, an, 0, ar) + q + opt


def opt(size: int = 1232, do: bool = False, options: bytes = b"") -> bytes:
    return b"\x00" + struct.pack("!HHIH", 41, size, 0x8000 if do else 0, len(options)) + options


def option(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


@pytest.fixture
def dead() -> str:
    return f"127.0.0.1:{dead_port()}"


def check_error_reply(reply: bytes, sent: bytes, rcode: int, question: bool, edns: bool,
                      rd: bool, ra: bool) -> dns.message.Message:
    m = dns.message.from_wire(reply)
    assert m.id == 0x1234
    assert m.rcode() == rcode
    assert m.opcode() == dns.opcode.from_flags(struct.unpack("!H", sent[2:4])[0])
    assert bool(m.flags & dns.flags.QR)
    assert bool(m.flags & dns.flags.RD) == rd
    assert bool(m.flags & dns.flags.RA) == ra
    if question:
        assert [(q.name.to_text(), q.rdtype) for q in m.question] == [("example.org.", 1)]
    else:
        assert not m.question
    assert (m.edns == 0) == edns
    if edns:
        assert m.payload == 1232
    return m


@pytest.mark.parametrize(("data", "rcode", "question", "edns", "rd", "ra"), [
    pytest.param(query(0x7900, opt=opt()), dns.rcode.NOTIMP, True, True, False, False,
                 id="rfc1035-4.1.1-notimp-unknown-opcode-keeps-question-and-opt-no-rd-ra"),
    pytest.param(query(0x7800, qd=0), dns.rcode.NOTIMP, False, False, False, False,
                 id="rfc1035-4.1.1-notimp-header-only-query"),
    pytest.param(query(0x1900, opt=opt()), dns.rcode.NOTIMP, True, True, False, False,
                 id="rfc1035-4.1.1-notimp-opcode-3"),
    pytest.param(query(opt=opt(options=struct.pack("!HH", 3, 10) + b"ab")), dns.rcode.FORMERR,
                 True, True, True, True, id="rfc6891-7-formerr-option-overrun-keeps-opt"),
    pytest.param(query(opt=opt(options=b"\x00\x03")), dns.rcode.FORMERR,
                 True, True, True, True, id="rfc6891-7-formerr-option-header-cut"),
    pytest.param(query(0x0000, opt=opt(options=b"\x00\x03")), dns.rcode.FORMERR,
                 True, True, False, True, id="rfc1035-4.1.1-formerr-rd-copied-when-clear"),
    pytest.param(query(qd=2), dns.rcode.FORMERR, False, False, True, True,
                 id="rfc1035-4.1.1-formerr-two-questions-header-only"),
    pytest.param(query(opt=opt(), qclass=3), dns.rcode.REFUSED, True, True, True, True,
                 id="refused-class-chaos-keeps-question-and-opt"),
])
def test_error_reply_written_by_linkdns(data: bytes, rcode: int, question: bool, edns: bool,
                                        rd: bool, ra: bool, dead: str) -> None:
    with Running(corefile(dead)) as srv:
        for tcp in (False, True):
            reply = raw_exchange(srv.port, data, tcp=tcp)
            check_error_reply(reply, data, rcode, question, edns, rd, ra)


@pytest.mark.parametrize("rd", [True, False])
def test_servfail_from_linkdns_keeps_question_rd_and_opt(dead: str, rd: bool) -> None:
    """rfc1035-4.1.1 / rfc6891-7: the SERVFAIL after every upstream failed."""
    data = query(0x0100 if rd else 0x0000, opt=opt(do=True))
    with Running(corefile(dead)) as srv:
        m = check_error_reply(raw_exchange(srv.port, data), data, dns.rcode.SERVFAIL,
                              True, True, rd, True)
    assert m.ednsflags & dns.flags.DO


@pytest.mark.parametrize(("upstream", "rcode"), [
    pytest.param(lambda q: make_reply(q, rcode=dns.rcode.REFUSED, ra=False),
                 dns.rcode.REFUSED, id="relayed-refused-gets-ra"),
    pytest.param(lambda q: make_reply(q, rcode=dns.rcode.SERVFAIL, ra=False),
                 dns.rcode.SERVFAIL, id="relayed-servfail-gets-ra"),
    pytest.param(lambda q: _no_ra(a_records(q, 1)),
                 dns.rcode.NOERROR, id="relayed-answer-from-authoritative-gets-ra"),
])
@pytest.mark.parametrize("cache", [False, True])
def test_relayed_reply_gets_ra(up: FakeUpstream, upstream: object, rcode: int,
                               cache: bool) -> None:
    up.handler = lambda q, p: upstream(q)  # type: ignore[operator]
    with Running(corefile(up, extra=" cache\n" if cache else "")) as srv:
        r = srv.query("relay.test.")
    assert r.rcode() == rcode
    assert r.flags & dns.flags.RA


def _no_ra(m: dns.message.Message) -> dns.message.Message:
    m.flags &= ~dns.flags.RA
    m.flags |= dns.flags.AA
    return m


# -- RFC 7873 §5.2.2: COOKIE option lengths ---------------------------------------------------


@pytest.mark.parametrize(("length", "ok"), [
    pytest.param(8, True, id="rfc7873-5.2.2-client-cookie-8"),
    pytest.param(16, True, id="rfc7873-5.2.2-with-server-cookie-16"),
    pytest.param(40, True, id="rfc7873-5.2.2-with-server-cookie-40"),
    pytest.param(0, False, id="rfc7873-5.2.2-empty-formerr"),
    pytest.param(7, False, id="rfc7873-5.2.2-short-formerr"),
    pytest.param(9, False, id="rfc7873-5.2.2-between-9-and-15-formerr"),
    pytest.param(15, False, id="rfc7873-5.2.2-15-formerr"),
    pytest.param(41, False, id="rfc7873-5.2.2-over-40-formerr"),
])
def test_cookie_option_length(up: FakeUpstream, length: int, ok: bool) -> None:
    cookie = bytes(range(1, length + 1))
    data = query(opt=opt(options=option(10, cookie)))
    with Running(corefile(up)) as srv:
        m = dns.message.from_wire(raw_exchange(srv.port, data))
    assert m.id == 0x1234 and m.edns == 0
    cookies = [o for o in m.options if o.otype == dns.edns.OptionType.COOKIE]
    if ok:
        assert m.rcode() == dns.rcode.NOERROR and m.answer
        assert [o.to_wire() for o in cookies] == [cookie]  # echoed (no server cookie of ours)
    else:
        assert m.rcode() == dns.rcode.FORMERR and not m.answer
        assert [q.name.to_text() for q in m.question] == ["example.org."]
        assert not cookies  # a malformed cookie is not echoed
        assert up.count() == 0


# -- RFC 8945 §5.5: a forwarder passes a signed exchange on unchanged --------------------------

#: nsd's reply to a TSIG with a key it does not know: NOTAUTH, no question, an unsigned TSIG
#: (key ".", hmac-sha256, error BADKEY); the first two bytes (the ID) are patched per query
BADKEY = bytes.fromhex(
    "00008009000000000000000100" "00fa00ff00000000001d0b686d61632d7368613235360000006b15c68e"
    "012c0000395700110000")


class RawUpstream:
    """A UDP socket on 127.0.0.1 answering every datagram with BADKEY (its ID patched)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.seen.append(data)
            self.sock.sendto(data[:2] + BADKEY[2:], peer)

    def __enter__(self) -> RawUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def test_signed_query_is_forwarded_unchanged_and_never_cached() -> None:
    keyring = dns.tsigkeyring.from_text({".": "A" * 43 + "="})
    with RawUpstream() as raw_up, Running(corefile(raw_up.addr, extra=" cache\n")) as srv:
        replies = []
        for _ in range(2):
            q = dns.message.make_query("example.org.", "SOA")
            q.use_tsig(keyring, keyname=".", algorithm=dns.tsig.HMAC_SHA256)
            sent = q.to_wire()
            replies.append((sent, raw_exchange(srv.port, sent)))
    assert len(raw_up.seen) == 2  # the second signed query was not answered from the cache
    for sent, reply in replies:
        assert reply[:2] == sent[:2]
        assert reply[2:] == BADKEY[2:3] + bytes((BADKEY[3] | 0x80,)) + BADKEY[4:]  # + RA
        # what reached the upstream: the client's query, TSIG and all, under a fresh ID
    assert [d[2:] for d in raw_up.seen] == [s[2:] for s, _ in replies]
