"""cache: what one entry costs in memory, and the layout that keeps it small.

A NodeLocal DNSCache config holds four caches of 9984 + 9984 entries, so every object an entry
owns is paid ~80,000 times. These tests pin the structure (slots, no per-entry dict, shared
header / TTL offsets / TTL values, no copy of the question) and the retained bytes per entry,
measured with tracemalloc around 2,000 entries stored through the real API (``Cache.store_reply``):
329 bytes per entry when this test was written (the previous layout, two templates and a copy
of the question per entry: 1,067). The bound is generous; a regression that brings back a
second copy of the reply or a per-entry dict crosses it.

The layout (see ``store.py``): an entry keeps only the records; a hit starts from the client's
own datagram (its ID and its question, letter case included) and puts the shared header and
the records after it. The hit-vs-slow-path grid in ``test_cache_hitpath.py`` checks the bytes;
the cases here are the ones this layout makes special.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from fakeupstream import a_records, answer, nxdomain

from linkdns import wire
from linkdns.clock import Clock
from linkdns.plugins.cache import Cache, CacheConfig, policy
from linkdns.plugins.cache.setup import ClassConfig
from linkdns.plugins.cache.store import Entry, Head, Store
from linkdns.request import Request

PEER = ("127.0.0.1", 5353)
N = 2000
#: retained bytes per stored 1-record answer, key and index slot included (measured: 329)
MAX_BYTES_PER_ENTRY = 480


def scan(wire_query: bytes) -> wire.Query:
    st, q = wire.scan_query(wire_query)
    assert st == 0 and q is not None
    return q


def new_cache(cap: int = N) -> Cache:
    cfg = CacheConfig(success=ClassConfig(cap, 3600), denial=ClassConfig(cap, 1800))
    return Cache(cfg, zones=["."], clock=Clock())


def pod_answer(i: int) -> tuple[bytes, bytes]:
    """A typical cluster answer: one A record, the zone's NS in authority."""
    qm = dns.message.make_query(f"pod-{i}.ns.svc.cluster.local.", "A", use_edns=False)
    r = a_records(qm, 1, 300)
    r.authority.append(dns.rrset.from_text("cluster.local.", 300, "IN", "NS",
                                           "ns.example.test."))
    return qm.to_wire(), r.to_wire()


def fill(c: Cache, pairs: list[tuple[bytes, bytes]]) -> None:
    for qw, rw in pairs:
        assert c.store_reply(Request(scan(qw), PEER, "udp"), rw, False) is not None


def store(c: Cache, qm: dns.message.Message, reply: dns.message.Message) -> Entry:
    e = c.store_reply(Request(scan(qm.to_wire()), PEER, "udp"), reply.to_wire(), False)
    assert e is not None
    return e


# -- structure ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Entry, Head, Store], ids=lambda c: c.__name__)
def test_per_entry_classes_have_slots_and_no_dict(cls: type) -> None:
    assert "__slots__" in vars(cls)
    assert "__dict__" not in dir(cls)
    assert "__weakref__" not in dir(cls)


def test_entry_owns_one_bytes_object_and_shares_the_rest() -> None:
    c = new_cache()
    pairs = [pod_answer(i) for i in (1, 2)]
    fill(c, pairs)
    e1, e2 = (c.store.get(scan(qw).key) for qw, _ in pairs)
    assert e1 is not None and e2 is not None
    assert not hasattr(e1, "__dict__")
    assert sys.getsizeof(e1) <= 96  # 8 slots: header + GC header + 64 (no prefetch fields)
    # the same reply shape: one header object, one offsets tuple, one TTL int (3600 > 256)
    assert e1.head is e2.head
    assert e1.offsets is e2.offsets
    assert e1.orig_ttl is e2.orig_ttl or e1.orig_ttl <= 256
    # no copy of the header or the question: only the records
    q = scan(pairs[0][0])
    reply = pairs[0][1]
    assert e1.rest == reply[q.q_end:] and len(e1.rest) < len(reply) - q.q_end + 1


def test_bytes_per_entry_stay_under_the_bound() -> None:
    pairs = [pod_answer(i) for i in range(N)]
    fill(new_cache(), pairs)  # warm the shared tables (headers, offsets, TTLs, slot numbers)
    gc.collect()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        c = new_cache()
        fill(c, pairs)  # keys are created in here (scan), as on a real miss
        gc.collect()
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / N
    finally:
        if started:
            tracemalloc.stop()
    assert len(c.store) == N
    assert per_entry < MAX_BYTES_PER_ENTRY, f"{per_entry:.0f} bytes per cache entry"


def test_hits_allocate_nothing_that_stays() -> None:
    pairs = [pod_answer(i) for i in range(200)]
    c = new_cache()
    fill(c, pairs)
    queries = [scan(qw) for qw, _ in pairs]
    for q in queries:  # first hits: nothing to rebuild yet (same second)
        assert c.hit(q, 512) is not None
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            for q in queries:
                assert c.hit(q, 512) is not None
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2048


# -- what the layout makes special ----------------------------------------------------------


def _same(c: Cache, e: Entry, qm: dns.message.Message) -> dns.message.Message:
    q = scan(qm.to_wire())
    fast = c.hit(q, 65535)
    assert fast is not None
    assert bytes(fast) == policy.render(e, q, c.ttl_for(e, c.now()))
    return dns.message.from_wire(bytes(fast))


@pytest.mark.parametrize(
    ("qtype", "name"),
    [
        pytest.param("HTTPS", "svc.example.org.", id="qtype-65-is-the-letter-A"),
        pytest.param("A", "MiXeD.ExAmPlE.oRg.", id="client-case-kept"),
        pytest.param("A", "ns.example.org.", id="name-also-in-records"),
    ],
)
def test_the_question_comes_from_the_client(qtype: str, name: str) -> None:
    c = new_cache()
    stored_q = dns.message.make_query(name.lower(), qtype, use_edns=False)
    reply = answer(stored_q, [(name.lower(), 300, "CNAME", "target.example.org.")],
                   authority=[("example.org.", 300, "NS", "ns.example.org.")])
    e = store(c, stored_q, reply)
    m = _same(c, e, dns.message.make_query(name, qtype, use_edns=False))
    assert m.question[0].name.to_text() == name
    assert dns.rdatatype.to_text(m.question[0].rdtype) == qtype
    # (a target compressed against the question reads back in the client's case, as before)
    assert [rr.to_text().lower() for rr in m.answer[0]] == ["target.example.org."]


@pytest.mark.parametrize(
    ("edns", "cookie"),
    [
        pytest.param(False, b"", id="plain"),
        pytest.param(True, b"", id="edns"),
        pytest.param(True, b"\x01\x02\x03\x04\x05\x06\x07\x08", id="edns-cookie"),
    ],
)
def test_opt_is_appended_and_counted(edns: bool, cookie: bytes) -> None:
    c = new_cache()
    qm = dns.message.make_query("nx.example.org.", "A", use_edns=False)
    e = store(c, qm, nxdomain(qm, 300, 300))
    opts: list[dns.edns.Option] | None = (
        [dns.edns.GenericOption(dns.edns.COOKIE, cookie)] if cookie else None)
    client = dns.message.make_query("nx.example.org.", "A", use_edns=0 if edns else False,
                                    payload=1232, options=opts)
    m = _same(c, e, client)
    assert (m.edns >= 0) == edns
    assert len(m.authority) == 1 and m.rcode() == dns.rcode.NXDOMAIN
    if cookie:
        assert [o.to_wire() for o in m.options] == [cookie]


def test_an_additional_record_that_is_not_an_opt_is_not_echoed() -> None:
    c = new_cache()
    qm = dns.message.make_query("x.example.org.", "A", use_edns=False)
    e = store(c, qm, a_records(qm, 2, 300))
    client = dns.message.make_query("x.example.org.", "A", use_edns=False)
    client.additional.append(dns.rrset.from_text("x.example.org.", 60, "IN", "TXT", "junk"))
    m = _same(c, e, client)
    assert m.additional == [] and len(m.answer[0]) == 2


def test_client_flags_rd_and_ad() -> None:
    c = new_cache()
    qm = dns.message.make_query("f.example.org.", "A", use_edns=False)
    up = a_records(qm, 1, 300)
    up.flags |= dns.flags.AD
    e = store(c, qm, up)
    no_rd = dns.message.make_query("f.example.org.", "A", use_edns=False)
    no_rd.flags &= ~dns.flags.RD
    assert not _same(c, e, no_rd).flags & dns.flags.RD
    with_ad = dns.message.make_query("f.example.org.", "A", use_edns=False)
    with_ad.flags |= dns.flags.AD
    m = _same(c, e, with_ad)
    assert m.flags & dns.flags.AD and m.flags & dns.flags.RD
