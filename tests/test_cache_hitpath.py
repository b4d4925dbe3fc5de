"""cache: the synchronous hit path gives byte-for-byte what the slow path renders.

``Cache.hit`` (template copy + patches) and ``policy.render`` (struct per TTL offset, flags from
the query, ``replies.finish_reply``) are written apart on purpose; these tests pin them together
for a grid of queries, then check the eviction and classification rules at the unit level.
"""

from __future__ import annotations

from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest
from fakeupstream import a_records, answer, nodata, nxdomain, servfail

from linkdns import wire
from linkdns.clock import Clock
from linkdns.plugins.cache import Cache, CacheConfig, policy
from linkdns.plugins.cache.setup import ClassConfig
from linkdns.plugins.cache.store import DENIAL, SERVFAIL, SUCCESS, Entry, Store
from linkdns.request import Request

PEER = ("127.0.0.1", 5353)


def scan(msg: dns.message.Message) -> wire.Query:
    st, q = wire.scan_query(msg.to_wire())
    assert st == 0 and q is not None
    return q


def make_query(name: str, rdtype: str = "A", *, edns: bool = False, do: bool = False,
               cd: bool = False, ad: bool = False, rd: bool = True, size: int = 1232,
               cookie: bytes = b"") -> dns.message.Message:
    opts: list[dns.edns.Option] = (
        [dns.edns.GenericOption(dns.edns.COOKIE, cookie)] if cookie else [])
    m = dns.message.make_query(name, rdtype, use_edns=0 if (edns or do) else None,
                               want_dnssec=do, payload=size, options=opts or None)
    if cd:
        m.flags |= dns.flags.CD
    if ad:
        m.flags |= dns.flags.AD
    if not rd:
        m.flags &= ~dns.flags.RD
    return m


def store(c: Cache, qm: dns.message.Message, reply: dns.message.Message) -> Entry:
    q = scan(qm)
    e = c.store_reply(Request(q, PEER, "udp"), reply.to_wire(), False)
    assert e is not None
    return e


def new_cache(**kw: object) -> tuple[Cache, Clock]:
    clock = Clock()
    return Cache(CacheConfig(**kw), zones=["."], clock=clock), clock  # type: ignore[arg-type]


REPLIES = {
    "1-record": lambda q: a_records(q, 1, 300),
    "20-records": lambda q: a_records(q, 20, 300),
    "nxdomain": lambda q: nxdomain(q, 900, 900),
    "nodata": lambda q: nodata(q, 600, 600),
    "aa-ad": lambda q: _flags(a_records(q, 2, 120), dns.flags.AA | dns.flags.AD),
    "cname-chain": lambda q: answer(q, [(q.question[0].name.to_text(), 300, "CNAME",
                                         "web.example.org."),
                                        ("web.example.org.", 60, "A", "192.0.2.7")],
                                    authority=[("example.org.", 500, "NS", "ns1.example.org.")],
                                    additional=[("ns1.example.org.", 700, "A", "192.0.2.53")]),
    "servfail": servfail,
}


def _flags(m: dns.message.Message, f: int) -> dns.message.Message:
    m.flags |= f
    return m


QUERIES: dict[str, dict[str, Any]] = {
    "plain": {},
    "edns": {"edns": True},
    "edns-512": {"edns": True, "size": 512},
    "do": {"do": True},
    "cd": {"cd": True},
    "do-cd": {"do": True, "cd": True},
    "client-ad": {"ad": True},
    "no-rd": {"rd": False},
    "cookie": {"edns": True, "cookie": b"\x01\x02\x03\x04\x05\x06\x07\x08"},
}


@pytest.mark.parametrize("aa", ["keep", "set", "clear"])
@pytest.mark.parametrize("qkind", list(QUERIES))
@pytest.mark.parametrize("rkind", list(REPLIES))
def test_hit_equals_slow_path(rkind: str, qkind: str, aa: str) -> None:
    c, clock = new_cache(aa=aa)
    kw = QUERIES[qkind]
    e = store(c, make_query("www.example.org.", **kw), REPLIES[rkind](
        make_query("www.example.org.", **kw)))
    steps = ((0, "www.example.org."), (1.5, "WwW.ExAmple.ORG."), (3, "www.example.org."))
    for elapsed, name in steps:
        clock.advance(elapsed)
        q = scan(make_query(name, **kw))
        fast = c.hit(q, 65535)
        assert fast is not None, (rkind, qkind)
        slow = policy.render(e, q, c.ttl_for(e, clock.now()))
        assert bytes(fast) == slow
        # the first answer to a miss is built by policy.assemble: the same bytes
        assert bytes(policy.assemble(e, q, policy.client_opt(q))) == slow
        # and it is a well-formed answer to this very query
        m = dns.message.from_wire(bytes(fast))
        assert m.id == q.id
        assert m.question[0].name.to_text() == name
        assert (m.edns >= 0) == q.has_opt


@pytest.mark.parametrize("rkind", ["1-record", "20-records", "nxdomain"])
def test_hit_refuses_what_does_not_fit_and_keeps_counting_right(rkind: str) -> None:
    c, _ = new_cache()
    qm = make_query("big.example.org.", edns=True)
    e = store(c, qm, REPLIES[rkind](qm))
    q = scan(qm)
    full = c.hit(q, 65535)
    assert full is not None
    assert c.hit(q, len(full) - 1) is None
    assert c.hit(q, len(full)) is not None
    assert c.hits[e.cls] == 2  # the refused one is not a hit: the slow path will count it


def test_keepttl_answers_with_the_original_ttl() -> None:
    c, clock = new_cache(keepttl=True)
    qm = make_query("k.example.org.")
    store(c, qm, a_records(qm, 3, 100))
    clock.advance(42)
    m = dns.message.from_wire(bytes(c.hit(scan(qm), 512) or b""))
    assert [rr.ttl for rr in m.answer] == [100]


def test_hit_ttl_decreases_and_expires() -> None:
    c, clock = new_cache()
    qm = make_query("t.example.org.")
    store(c, qm, a_records(qm, 1, 60))
    q = scan(qm)
    ttls = []
    for step in (0, 10, 49.5):
        clock.advance(step)
        m = dns.message.from_wire(bytes(c.hit(q, 512) or b""))
        ttls.append(m.answer[0].ttl)
    assert ttls == [60, 50, 1]
    clock.advance(0.6)  # 60.1 s: expired, the slow path decides
    assert c.hit(q, 512) is None


# -- classification and TTL ----------------------------------------------------------------


def _kind(reply: dns.message.Message) -> int | None:
    q = scan(make_query("x.example.org."))
    p = policy.parse_reply(q, reply.to_wire())
    return None if p is None else p.kind


def test_classification() -> None:
    q = make_query("x.example.org.")
    assert _kind(a_records(q, 1)) == SUCCESS
    assert _kind(answer(q, authority=[("example.org.", 60, "NS", "ns.example.org.")])) == SUCCESS
    assert _kind(nodata(q)) == DENIAL
    assert _kind(nxdomain(q)) == DENIAL
    assert _kind(servfail(q)) == SERVFAIL
    notimp = servfail(q)
    notimp.set_rcode(dns.rcode.NOTIMP)
    assert _kind(notimp) == SERVFAIL
    refused = servfail(q)
    refused.set_rcode(dns.rcode.REFUSED)
    assert _kind(refused) is None
    tc = a_records(q, 1)
    tc.flags |= dns.flags.TC
    assert _kind(tc) is None
    bare_nx = answer(q, rcode=dns.rcode.NXDOMAIN)
    assert _kind(bare_nx) is None  # RFC 2308: no SOA, no negative caching
    nx_with_answer = answer(q, [("x.example.org.", 60, "CNAME", "gone.example.org.")],
                            rcode=dns.rcode.NXDOMAIN,
                            authority=[("example.org.", 60, "SOA",
                                        "ns. host. 1 2 3 4 60")])
    assert _kind(nx_with_answer) is None
    formerr = servfail(q)
    formerr.set_rcode(dns.rcode.FORMERR)
    assert _kind(formerr) is None


def test_axfr_is_never_stored() -> None:
    qm = make_query("example.org.", "AXFR")
    q = scan(qm)
    assert policy.parse_reply(q, answer(qm, [("example.org.", 60, "A", "192.0.2.1")])
                              .to_wire()) is None


@pytest.mark.parametrize(
    ("cfg", "reply", "want"),
    [
        pytest.param({}, lambda q: a_records(q, 1, 2), 5, id="min-ttl-raises-2-to-5"),
        pytest.param({"success": ClassConfig(10, 30)}, lambda q: a_records(q, 1, 3600), 30,
                     id="max-ttl-caps"),
        pytest.param({"denial": ClassConfig(10, 5)}, lambda q: nxdomain(q, 3600, 3600), 5,
                     id="denial-ttl-from-soa-capped"),
        pytest.param({}, lambda q: nxdomain(q, 120, 3600), 120, id="denial-ttl-is-soa-ttl"),
        pytest.param({}, servfail, 5, id="servfail-default-5s"),
        pytest.param({"servfail": 30.0}, servfail, 30, id="servfail-30s"),
        pytest.param({}, lambda q: answer(q, [("x.example.org.", 300, "A", "192.0.2.1")],
                                          additional=[("x.example.org.", 20, "TXT", "t")]),
                     20, id="lowest-of-all-sections"),
    ],
)
def test_stored_ttl(cfg: dict[str, object], reply: object, want: int) -> None:
    c, _ = new_cache(**cfg)
    qm = make_query("x.example.org.")
    e = store(c, qm, reply(qm))  # type: ignore[operator]
    assert e.orig_ttl == want


@pytest.mark.parametrize(
    ("cfg", "reply"),
    [
        pytest.param({"servfail": 0.0}, servfail, id="servfail-0"),
        pytest.param({"no_negcache": True}, servfail, id="no-negcache-servfail"),
        pytest.param({"no_negcache": True}, nxdomain, id="no-negcache-nxdomain"),
        pytest.param({"no_negcache": True}, nodata, id="no-negcache-nodata"),
        pytest.param({"denial": ClassConfig(0, 1800)}, nxdomain, id="denial-capacity-0"),
        pytest.param({"success": ClassConfig(0, 3600)}, lambda q: a_records(q, 1),
                     id="success-capacity-0"),
        pytest.param({"disable_success": ["."]}, lambda q: a_records(q, 1), id="disable-success"),
        pytest.param({"disable_denial": ["example.org."]}, nxdomain, id="disable-denial-zone"),
        pytest.param({"success": ClassConfig(10, 3600, 0)}, lambda q: a_records(q, 1, 0),
                     id="ttl-clamps-to-0"),
    ],
)
def test_not_stored(cfg: dict[str, object], reply: object) -> None:
    c, _ = new_cache(**cfg)
    qm = make_query("x.example.org.")
    q = scan(qm)
    assert c.store_reply(Request(q, PEER, "udp"), reply(qm).to_wire(), False) is None  # type: ignore[operator]
    assert len(c.store) == 0


def test_disable_applies_only_inside_its_zones() -> None:
    c, _ = new_cache(disable_success=["internal.example."])
    for name, stored in (("a.internal.example.", False), ("internal.example.", False),
                         ("notinternal.example.", True), ("a.example.org.", True)):
        qm = make_query(name)
        q = scan(qm)
        got = c.store_reply(Request(q, PEER, "udp"), a_records(qm, 1).to_wire(), False)
        assert (got is not None) == stored, name


def test_mismatched_question_is_dropped_and_counted() -> None:
    c, _ = new_cache()
    qm = make_query("asked.example.org.")
    other = a_records(make_query("other.example.org."), 1)
    other.id = qm.id
    assert c.store_reply(Request(scan(qm), PEER, "udp"), other.to_wire(), False) is None
    assert c.drops == 1


def test_failed_refresh_keeps_the_entry() -> None:
    c, _ = new_cache(stale=3600.0)
    qm = make_query("s.example.org.")
    good = store(c, qm, a_records(qm, 1, 60))
    req = Request(scan(qm), PEER, "udp")
    assert c.store_reply(req, servfail(qm).to_wire(), True) is None
    assert c.store.get(req.q.key) is good
    # a client's own miss may still store a SERVFAIL (there is nothing better to serve)
    assert c.store_reply(req, servfail(qm).to_wire(), False) is not None


# -- the store ------------------------------------------------------------------------------


def _entry(i: int, kind: int = SUCCESS) -> Entry:
    data = b"\x00\x00\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01"
    return Entry(data, (), 0.0, 60, kind, False, False, False, False)


def test_store_never_grows_past_capacity_and_counts_evictions() -> None:
    s = Store(100, 10)
    for i in range(350):
        s.put(b"k%d" % i, _entry(i))
        assert s.sizes()[0] <= 100
    for i in range(25):
        s.put(b"n%d" % i, _entry(i, DENIAL))
    assert s.sizes() == (100, 10)
    assert s.evictions == [250, 15]
    assert len(s) == 110


def test_store_eviction_gives_used_entries_a_second_chance() -> None:
    s = Store(3, 1)
    for k in (b"a", b"b", b"c"):
        s.put(k, _entry(0))
    hot = s.get(b"a")
    assert hot is not None
    hot.used = True
    s.put(b"d", _entry(0))  # evicts b (a was used: moved to the back)
    assert s.get(b"a") is hot and s.get(b"b") is None
    s.put(b"e", _entry(0))  # c is next
    assert s.get(b"c") is None and s.get(b"a") is hot


def test_store_replacing_across_classes_moves_the_key() -> None:
    s = Store(5, 5)
    s.put(b"k", _entry(0, SUCCESS))
    s.put(b"k", _entry(0, DENIAL))
    assert s.sizes() == (0, 1)
    s.put(b"k", _entry(0, SERVFAIL))
    assert s.sizes() == (0, 1)
    s.remove(b"k")
    assert s.sizes() == (0, 0) and len(s) == 0


@pytest.mark.parametrize(
    ("aa", "qkw", "want_aa", "want_ad"),
    [
        pytest.param("keep", {}, True, False, id="keep-plain"),
        pytest.param("keep", {"do": True}, True, True, id="keep-do-keeps-ad"),
        pytest.param("keep", {"ad": True}, True, True, id="keep-client-ad-keeps-ad"),
        pytest.param("clear", {"ad": True}, False, True, id="clear"),
        pytest.param("set", {}, True, False, id="set"),
    ],
)
def test_hit_flags(aa: str, qkw: dict[str, Any], want_aa: bool, want_ad: bool) -> None:
    c, _ = new_cache(aa=aa)
    qm = make_query("f.example.org.", **qkw)
    store(c, qm, _flags(a_records(qm, 1), dns.flags.AA | dns.flags.AD))
    for rd, cd in ((True, False), (False, True)):
        q2 = make_query("f.example.org.", rd=rd, cd=cd, **qkw)
        if cd:  # CD is part of the key: store that variant too
            store(c, q2, _flags(a_records(q2, 1), dns.flags.AA | dns.flags.AD))
        m = dns.message.from_wire(bytes(c.hit(scan(q2), 512) or b""))
        assert m.flags & dns.flags.QR and m.flags & dns.flags.RA
        assert bool(m.flags & dns.flags.AA) == want_aa
        assert bool(m.flags & dns.flags.AD) == want_ad
        assert bool(m.flags & dns.flags.RD) == rd
        assert bool(m.flags & dns.flags.CD) == cd


def test_an_answer_that_may_not_be_stored_retires_the_old_entry() -> None:
    """no_negcache: a refresh that learns NXDOMAIN drops the (stale) A entry; SERVFAIL keeps it."""
    c, _ = new_cache(no_negcache=True, stale=3600.0)
    qm = make_query("r.example.org.")
    good = store(c, qm, a_records(qm, 1, 60))
    req = Request(scan(qm), PEER, "udp")
    assert c.store_reply(req, servfail(qm).to_wire(), True) is None
    assert c.store.get(req.q.key) is good
    assert c.store_reply(req, nxdomain(qm).to_wire(), True) is None
    assert c.store.get(req.q.key) is None
