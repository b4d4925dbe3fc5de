"""wire.py against dnspython: scanning, OPT handling, truncation, reply fitting."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from linkdns import message, replies, wire


def reply_with(n: int, name: str = "x.example.org.", use_edns: int = -1) -> dns.message.Message:
    q = dns.message.make_query(name, "A", use_edns=use_edns)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text_list(name, 60, "IN", "A",
                                             [f"192.0.2.{i}" for i in range(1, n + 1)]))
    return r


def test_scan_reads_question_opt_and_cookie() -> None:
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\xaa" * 8)
    q = dns.message.make_query("WWW.Example.org.", "AAAA", use_edns=0, payload=1400,
                               want_dnssec=True, options=[cookie])
    q.flags |= dns.flags.CD
    st, s = wire.scan_query(q.to_wire())
    assert st == 0 and s is not None
    assert s.name == "www.example.org."
    assert s.qname_wire == b"\x03WWW\x07Example\x03org\x00"
    assert s.qtype == 28 and s.qclass == 1
    assert s.has_opt and s.udp_size == 1400 and s.do and s.cd
    assert s.cookie[4:] == b"\xaa" * 8
    assert s.key == b"\x03www\x07example\x03org\x00\x00\x1c\x00\x01\x03"


def test_small_edns_size_counts_as_512() -> None:
    q = dns.message.make_query("a.", "A", use_edns=0, payload=100)
    _, s = wire.scan_query(q.to_wire())
    assert s is not None and s.udp_size == 512


@pytest.mark.parametrize("n", [1, 20, 40])
def test_walk_finds_every_record_and_ttl_offset(n: int) -> None:
    w = reply_with(n).to_wire()
    _, rrs = replies.walk(w)
    assert len(rrs) == n
    assert all(w[r.ttl_offset : r.ttl_offset + 4] == (60).to_bytes(4, "big") for r in rrs)


def test_truncate_drops_from_the_end_and_sets_tc() -> None:
    w = reply_with(40, use_edns=0).to_wire()
    out = message.truncate(w, 512)
    assert len(out) <= 512
    m = dns.message.from_wire(out)
    assert m.flags & dns.flags.TC
    assert 0 < len(m.answer[0]) < 40
    assert m.edns == 0  # the OPT survives truncation


def test_truncate_compresses_before_dropping() -> None:
    # 20 uncompressed A records for a long name exceed 512; compressed they fit
    name = "a-rather-long-label-for-this-test.example.org."
    r = reply_with(20, name)
    body = bytearray(r.to_wire()[:12])
    body += dns.name.from_text(name).to_wire() + b"\x00\x01\x00\x01"
    for rr in r.answer[0]:
        body += dns.name.from_text(name).to_wire() + b"\x00\x01\x00\x01" + (60).to_bytes(4, "big")
        body += b"\x00\x04" + rr.to_digestable()
    assert len(body) > 512
    out = message.truncate(bytes(body), 512)
    m = dns.message.from_wire(out)
    assert not m.flags & dns.flags.TC
    assert len(m.answer[0]) == 20


def test_finish_reply_puts_client_id_case_and_opt() -> None:
    q = dns.message.make_query("MiXeD.example.org.", "A", use_edns=0, payload=1232)
    _, s = wire.scan_query(q.to_wire())
    assert s is not None
    upstream = reply_with(2, "mixed.example.org.", use_edns=0)
    upstream.id = 999
    upstream.use_edns(0, payload=4096)
    out = replies.finish_reply(s, upstream.to_wire())
    m = dns.message.from_wire(out)
    assert m.id == q.id
    assert str(m.question[0].name) == "MiXeD.example.org."
    assert m.payload == 1232


def test_finish_reply_strips_opt_for_a_client_without_edns() -> None:
    q = dns.message.make_query("a.example.org.", "A")
    _, s = wire.scan_query(q.to_wire())
    assert s is not None
    out = replies.finish_reply(s, reply_with(1, "a.example.org.", use_edns=0).to_wire())
    assert dns.message.from_wire(out).edns == -1


def test_error_reply_formerr_without_question() -> None:
    out = wire.error_reply(None, b"\x12\x34\x01\x00" + b"\x00" * 8, wire.FORMERR)
    m = dns.message.from_wire(out)
    assert m.id == 0x1234 and m.rcode() == dns.rcode.FORMERR


def test_query_copy_keeps_every_field() -> None:
    q = dns.message.make_query("Copy.Example.", "AAAA", use_edns=0, payload=1400,
                               want_dnssec=True)
    _, s = wire.scan_query(q.to_wire())
    assert s is not None
    other = b"\xbe\xef" + s.data[2:]
    c = s.copy(other)
    for f in wire.Query.__slots__:
        want = other if f == "data" else getattr(s, f)
        assert getattr(c, f) == want, f
