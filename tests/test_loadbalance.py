"""loadbalance: A/AAAA answers come back in varying order, on misses and on cache hits."""

from __future__ import annotations

import dns.message
import dns.rcode
import pytest
from fakeupstream import FakeUpstream, answer
from harness import Running

from linkdns.config import build_sites
from linkdns.corefile import parse_corefile
from linkdns.errors import ConfigError

ADDRS = [f"192.0.2.{i}" for i in range(1, 9)]


def handler(q: dns.message.Message, proto: str) -> dns.message.Message:
    name = q.question[0].name.to_text()
    rrs = [(name, 60, "CNAME", "target.example.")]
    rrs += [("target.example.", 60, "A", a) for a in ADDRS]
    rrs += [("target.example.", 60, "AAAA", f"2001:db8::{i}") for i in (1, 2, 3)]
    return answer(q, rrs)


def orders(srv: Running, n: int) -> tuple[set[tuple[str, ...]], list[dns.message.Message]]:
    seen = set()
    replies = []
    for _ in range(n):
        r = srv.query("lb.example.", "A")
        replies.append(r)
        a = next(rr for rr in r.answer if rr.rdtype == dns.rdatatype.A)
        seen.add(tuple(x.address for x in a))
    return seen, replies


@pytest.mark.parametrize("cache", ["", "cache 60\n"], ids=["no-cache", "cache-hits"])
def test_addresses_are_shuffled_cname_stays_first(cache: str) -> None:
    with FakeUpstream() as up:
        up.handler = handler
        cf = f".:0 {{\n bind 127.0.0.1\n loadbalance\n {cache} forward . {up.addr}\n}}\n"
        with Running(cf) as srv:
            seen, replies = orders(srv, 30)
            if cache:
                assert len(up.queries) == 1  # every reply after the first was a cache hit
                assert [h.name for h in srv.server.sites[0].pre_hit] == ["loadbalance"]
    assert len(seen) > 5  # 8! orders: 30 draws give many distinct ones
    for r in replies:
        assert r.rcode() == dns.rcode.NOERROR
        assert r.answer[0].rdtype == dns.rdatatype.CNAME
        a = next(rr for rr in r.answer if rr.rdtype == dns.rdatatype.A)
        assert sorted(x.address for x in a) == sorted(ADDRS)


def test_weighted_is_refused_with_its_line() -> None:
    with pytest.raises(ConfigError, match="Corefile:2 - plugin/loadbalance: the 'weighted'"):
        build_sites(parse_corefile(".:53 {\n loadbalance weighted /etc/w\n}\n"))
