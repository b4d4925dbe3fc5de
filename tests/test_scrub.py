"""Scrubbing upstream replies before they are cached or answered (issue 11, deliverable 1).

First the rules, on messages built with dnspython and read back with dnspython; then on the
wire: an upstream that injects records, linkdns with a cache in front, a dnspython client, and
a later honest answer for the victim name that must be the only one ever seen.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from fakeupstream import FakeUpstream, answer
from harness import Running
from test_forward import corefile, sample

from linkdns import replies, wire
from linkdns.plugins.forward.scrub import scrub

RR = tuple[str, int, str, str]  # name, ttl, type, rdata


def reply(qname: str, qtype: str, an: Iterable[RR] = (), ns: Iterable[RR] = (),
          ar: Iterable[RR] = (), rcode: int = 0, edns: bool = False) -> bytes:
    q = dns.message.make_query(qname, qtype, use_edns=0 if edns else None)
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.Rcode.make(rcode))
    for section, rrs in ((r.answer, an), (r.authority, ns), (r.additional, ar)):
        for name, ttl, t, rdata in rrs:
            section.append(dns.rrset.from_text(name, ttl, "IN", t, rdata))
    return r.to_wire()


def records(data: bytes) -> list[tuple[str, str, str, str]]:
    """(section, owner, type, rdata) of every record, as dnspython reads the message."""
    m = dns.message.from_wire(data)
    out = []
    for label, section in (("an", m.answer), ("ns", m.authority), ("ar", m.additional)):
        for rrset in section:
            for rd in rrset:
                out.append((label, rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype),
                            rd.to_text()))
    return out


def run(data: bytes, qname: str, qtype: str, zone: str = ".") -> bytes | None:
    return scrub(data, wire.text_to_name(qname), dns.rdatatype.from_text(qtype),
                 wire.text_to_name(zone))


SOA = "ns1.test. hostmaster.test. 1 3600 600 86400 60"
SIG = "{} 13 2 300 20300101000000 20200101000000 1 test. AAAA"  # type covered, ..., signature


# -- what stays: clean replies come back as the very same object ----------------------------

CLEAN = [
    pytest.param(reply("a.test.", "A", [("a.test.", 60, "A", "192.0.2.1")], edns=True),
                 "a.test.", "A", id="plain-answer-with-opt"),
    pytest.param(reply("www.test.", "A", [("www.test.", 60, "CNAME", "web.test."),
                                          ("web.test.", 60, "CNAME", "edge.cdn.test."),
                                          ("edge.cdn.test.", 60, "A", "192.0.2.7")]),
                 "www.test.", "A", id="cname-chain"),
    pytest.param(reply("x.old.test.", "A", [("old.test.", 60, "DNAME", "new.test."),
                                            ("x.old.test.", 60, "CNAME", "x.new.test."),
                                            ("x.new.test.", 60, "A", "192.0.2.8")]),
                 "x.old.test.", "A", id="dname-then-synthesized-cname"),
    pytest.param(reply("nx.test.", "A", ns=[("test.", 60, "SOA", SOA)], rcode=3),
                 "nx.test.", "A", id="nxdomain-soa-of-the-zone"),
    pytest.param(reply("www.test.", "A", [("www.test.", 60, "CNAME", "gone.other.")],
                       ns=[("other.", 60, "SOA", SOA)], rcode=3),
                 "www.test.", "A", id="nxdomain-soa-of-the-chain-target-zone"),
    pytest.param(reply("a.sub.test.", "A", ns=[("sub.test.", 60, "NS", "ns1.sub.test."),
                                               ("sub.test.", 60, "NS", "ns2.sub.test.")],
                       ar=[("ns1.sub.test.", 60, "A", "192.0.2.53"),
                           ("ns2.sub.test.", 60, "AAAA", "2001:db8::53")]),
                 "a.sub.test.", "A", id="referral-with-in-bailiwick-glue"),
    pytest.param(reply("test.", "MX", [("test.", 60, "MX", "10 mail.test.")],
                       ar=[("mail.test.", 60, "A", "192.0.2.25")]),
                 "test.", "MX", id="mx-target-address"),
    pytest.param(reply("a.test.", "AAAA", [("a.test.", 60, "AAAA", "2001:db8::1"),
                                           ("a.test.", 60, "RRSIG", SIG.format("AAAA"))]),
                 "a.test.", "AAAA", id="answer-rrsig"),
    pytest.param(reply("nx.test.", "A", ns=[
        ("test.", 60, "SOA", SOA), ("test.", 60, "RRSIG", SIG.format("SOA")),
        ("m.test.", 60, "NSEC", "o.test. A RRSIG NSEC"),
        ("m.test.", 60, "RRSIG", SIG.format("NSEC"))], rcode=3),
                 "nx.test.", "A", id="signed-denial-keeps-its-proofs"),
    pytest.param(reply("a.test.", "ANY", [("a.test.", 60, "A", "192.0.2.1"),
                                          ("a.test.", 60, "TXT", '"t"')]),
                 "a.test.", "ANY", id="any-keeps-every-type-at-the-name"),
]


@pytest.mark.parametrize(("data", "qname", "qtype"), CLEAN)
def test_clean_reply_is_returned_as_is(data: bytes, qname: str, qtype: str) -> None:
    assert run(data, qname, qtype) is data


# -- what goes --------------------------------------------------------------------------------

DIRTY = [
    pytest.param(
        reply("a.test.", "A", [("a.test.", 60, "A", "192.0.2.1"),
                               ("victim.test.", 60, "A", "6.6.6.6")]),
        "a.test.", "A", [("an", "a.test.", "A", "192.0.2.1")], id="other-name-in-answer"),
    pytest.param(
        reply("a.test.", "AAAA", [("a.test.", 60, "A", "6.6.6.6"),
                                  ("a.test.", 60, "AAAA", "2001:db8::1")]),
        "a.test.", "AAAA", [("an", "a.test.", "AAAA", "2001:db8::1")],
        id="a-record-in-reply-to-aaaa"),
    pytest.param(
        reply("www.test.", "A", [("www.test.", 60, "CNAME", "web.test."),
                                 ("victim.test.", 60, "A", "6.6.6.6"),
                                 ("web.test.", 60, "A", "192.0.2.7")]),
        "www.test.", "A", [("an", "www.test.", "CNAME", "web.test."),
                           ("an", "web.test.", "A", "192.0.2.7")],
        id="other-name-after-cname"),
    pytest.param(
        reply("www.test.", "A", [("web.test.", 60, "A", "6.6.6.6"),
                                 ("www.test.", 60, "CNAME", "web.test.")]),
        "www.test.", "A", [("an", "www.test.", "CNAME", "web.test.")],
        id="chain-target-before-its-cname"),
    pytest.param(
        reply("a.test.", "A", [("a.test.", 60, "A", "192.0.2.1")],
              ns=[("victim.test.", 60, "NS", "ns.evil.")],
              ar=[("ns.evil.", 60, "A", "6.6.6.6"), ("victim.test.", 60, "A", "6.6.6.6")]),
        "a.test.", "A", [("an", "a.test.", "A", "192.0.2.1")],
        id="unrelated-ns-and-glue"),
    pytest.param(
        reply("a.sub.test.", "A", ns=[("sub.test.", 60, "NS", "ns1.sub.test."),
                                      ("sub.test.", 60, "NS", "ns.other.")],
              ar=[("ns1.sub.test.", 60, "A", "192.0.2.53"), ("ns.other.", 60, "A", "6.6.6.6")]),
        "a.sub.test.", "A", [("ns", "sub.test.", "NS", "ns1.sub.test."),
                             ("ns", "sub.test.", "NS", "ns.other."),
                             ("ar", "ns1.sub.test.", "A", "192.0.2.53")],
        id="out-of-bailiwick-glue"),
    pytest.param(
        reply("nx.test.", "A", ns=[("test.", 60, "SOA", SOA), ("test.", 60, "NS", "ns1.test."),
                                   ("victim.", 60, "SOA", SOA)], rcode=3),
        "nx.test.", "A", [("ns", "test.", "SOA", SOA)], id="denial-keeps-only-its-soa"),
    pytest.param(
        reply("a.test.", "A", [("a.test.", 60, "A", "192.0.2.1")],
              ns=[("a.test.", 60, "CNAME", "victim.test."), ("a.test.", 60, "A", "6.6.6.6")]),
        "a.test.", "A", [("an", "a.test.", "A", "192.0.2.1")], id="addresses-in-authority"),
    pytest.param(
        reply("a.test.", "A", [("a.test.", 60, "A", "192.0.2.1")],
              ar=[("a.test.", 60, "TXT", '"x"'), ("a.test.", 60, "CNAME", "victim.test.")]),
        "a.test.", "A", [("an", "a.test.", "A", "192.0.2.1")], id="other-types-in-additional"),
    pytest.param(
        reply("c.test.", "A", [("other.evil.", 60, "A", "6.6.6.6"),
                               ("c.test.", 60, "CNAME", "www.other.evil."),
                               ("www.other.evil.", 60, "A", "192.0.2.9")]),
        "c.test.", "A", [("an", "c.test.", "CNAME", "www.other.evil."),
                         ("an", "www.other.evil.", "A", "192.0.2.9")],
        id="kept-names-compressed-against-a-removed-record"),
    pytest.param(
        reply("mx.test.", "MX", [("mx.test.", 60, "MX", "10 mail.evil.")],
              ar=[("mail.evil.", 60, "A", "6.6.6.6")]),
        "mx.test.", "MX", [("an", "mx.test.", "MX", "10 mail.evil.")],
        id="answer-target-outside-the-forward-zone"),
    pytest.param(
        reply("nx.test.", "A", ns=[("test.", 60, "SOA", SOA),
                                   ("evil.", 60, "NSEC", "z.evil. A NSEC"),
                                   ("test.", 60, "RRSIG", SIG.format("A"))], rcode=3),
        "nx.test.", "A", [("ns", "test.", "SOA", SOA)], id="proofs-outside-the-zone"),
]


@pytest.mark.parametrize(("data", "qname", "qtype", "want"), DIRTY)
def test_off_question_records_are_removed(data: bytes, qname: str, qtype: str,
                                          want: list[tuple[str, str, str, str]]) -> None:
    # The forward's FROM zone is "test." here: "." would make every target in bailiwick.
    out = run(data, qname, qtype, "test.")
    assert out is not None and out is not data
    assert records(out) == want
    assert dns.message.from_wire(out).id == dns.message.from_wire(data).id


@pytest.mark.parametrize(("data", "qtype"), [
    pytest.param(b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x01a\x04test\x00\x00\x01"
                 b"\x00\x01\xc0\x40\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04",
                 "A", id="forward-pointer-owner"),
    pytest.param(b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x01a\x04test\x00\x00\x05"
                 b"\x00\x01\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x02\xc0\x30",
                 "A", id="cname-target-pointer-forward"),
    pytest.param(b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x01a\x04test\x00\x00\x01"
                 b"\x00\x01\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x02\x01x\x00",
                 "A", id="cname-target-past-its-rdata"),
    pytest.param(reply("a.test.", "A", [("a.test.", 60, "A", "192.0.2.1")]) + b"\x00",
                 "A", id="trailing-byte"),
    pytest.param(reply("a.test.", "A", [("a.test.", 60, "A", "192.0.2.1")])[:-1],
                 "A", id="cut-short"),
])
def test_unreadable_reply_is_none(data: bytes, qtype: str) -> None:
    assert run(data, "a.test.", qtype) is None


# -- on the wire: nothing injected is answered or cached ----------------------------------------

VICTIM = "victim.test."


def poisoner(q: dns.message.Message, proto: str) -> dns.message.Message:
    """Injects for a.test./b.test./c.test.; answers honestly for everything else."""
    name = q.question[0].name.to_text()
    qtype = q.question[0].rdtype
    if name == "a.test." and qtype == dns.rdatatype.A:
        return answer(q, [("a.test.", 300, "A", "192.0.2.1"), (VICTIM, 300, "A", "6.6.6.6")],
                      authority=[(VICTIM, 300, "NS", "ns.evil.")],
                      additional=[("ns.evil.", 300, "A", "6.6.6.6"),
                                  (VICTIM, 300, "A", "6.6.6.6")])
    if name == "b.test.":
        return answer(q, [("b.test.", 300, "CNAME", "t.test."), (VICTIM, 300, "A", "6.6.6.6"),
                          ("t.test.", 300, "A", "192.0.2.2")])
    if name == "a.test." and qtype == dns.rdatatype.AAAA:
        return answer(q, [("a.test.", 300, "A", "6.6.6.6"),
                          ("a.test.", 300, "AAAA", "2001:db8::1")])
    if name == VICTIM:
        return answer(q, [(VICTIM, 300, "A", "192.0.2.44")] if qtype == dns.rdatatype.A else [])
    return answer(q, [])


def addresses(m: dns.message.Message) -> set[str]:
    return {rd.to_text() for section in (m.answer, m.authority, m.additional)
            for rrset in section if rrset.rdtype in (1, 28) for rd in rrset}


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_injected_records_never_reach_client_nor_cache(up: FakeUpstream, proto: str) -> None:
    up.handler = poisoner
    tcp = proto == "tcp"
    with Running(corefile(up, extra=" cache 300\n")) as srv:
        for _ in range(2):  # the miss, then the cache hit
            a = srv.query("a.test.", tcp=tcp, use_edns=0)
            assert a.rcode() == dns.rcode.NOERROR
            assert addresses(a) == {"192.0.2.1"} and not a.authority
            b = srv.query("b.test.", tcp=tcp)
            assert [(r.name.to_text(), r.rdtype) for r in b.answer] == [
                ("b.test.", dns.rdatatype.CNAME), ("t.test.", dns.rdatatype.A)]
            assert addresses(b) == {"192.0.2.2"}
            aaaa = srv.query("a.test.", "AAAA", tcp=tcp)
            assert [r.rdtype for r in aaaa.answer] == [dns.rdatatype.AAAA]
            assert addresses(aaaa) == {"2001:db8::1"}
        v = srv.query(VICTIM, tcp=tcp)
        scrubbed = sample(srv, "linkdns_forward_scrubbed_replies_total", to=up.addr)
    assert addresses(v) == {"192.0.2.44"}
    assert up.count() == 4  # a, b, a/AAAA once each (then cached), and the victim
    assert scrubbed == 3


def test_scrubbed_reply_is_well_formed_for_a_plain_client(up: FakeUpstream) -> None:
    """A non-EDNS client over UDP: the rebuilt reply still fits, reads, and keeps its flags."""
    up.handler = poisoner
    with Running(corefile(up)) as srv:
        r = srv.query("a.test.")
    assert r.flags & dns.flags.QR and r.flags & dns.flags.RA
    assert addresses(r) == {"192.0.2.1"}
    assert [rr.name.to_text() for rr in r.answer] == ["a.test."]


def test_mutated_replies_never_raise_and_rebuilds_read_back() -> None:
    """Bounded fuzz (2,000 mutations of a reply with records to remove): ``scrub`` returns None
    or a message; a rebuilt one reads as a DNS message."""
    rng = random.Random(11)
    base = reply("c.test.", "A", [("other.evil.", 60, "A", "6.6.6.6"),
                                  ("c.test.", 60, "CNAME", "www.other.evil."),
                                  ("www.other.evil.", 60, "A", "192.0.2.9")],
                 ns=[("test.", 60, "NS", "ns.test.")], ar=[("ns.test.", 60, "A", "192.0.2.5")],
                 edns=True)
    rebuilt = 0
    for _ in range(2000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(12, len(data))] = rng.randrange(256)
        mutated = bytes(data)
        out = run(mutated, "c.test.", "A")
        if out is not None and out is not mutated:
            replies.walk(out)  # raises WireError if the rebuild broke the message
            rebuilt += 1
    assert rebuilt > 100


def test_a_question_name_over_255_bytes_does_not_read() -> None:
    """The reply's question goes through the bounded reference walker (wire.skip_name): a
    name of 256 bytes is not a DNS name, so the reply is unreadable (None), not scrubbed."""
    long_name = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"  # 257 bytes
    ok_name = b"".join(b"\x3f" + b"a" * 63 for _ in range(3)) + b"\x3d" + b"a" * 61 + b"\x00"
    assert len(long_name) == 257 and len(ok_name) == 255
    header = bytes.fromhex("abcd81800001000000000000")
    for name, readable in ((ok_name, True), (long_name, False)):
        data = header + name + b"\x00\x01\x00\x01"
        out = scrub(data, name, 1)
        assert (out is not None) == readable, (len(name), out)
