"""A known mix of queries through cache and forward to the FakeUpstream, then /metrics: every
coredns_dns_* counter moved by exactly what was sent, with CoreDNS's labels; the cache-hit
path makes no prometheus-client call."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dns.message
import dns.rcode
import prometheus_client
import pytest
from fakeupstream import FakeUpstream, nxdomain, servfail
from harness import Running, query
from test_metrics import delta, scrape

Key = tuple[str, frozenset[tuple[str, str]]]


def upstream_handler(q: dns.message.Message, proto: str) -> Any:
    name = q.question[0].name.to_text()
    if name.startswith("nx."):
        return nxdomain(q)
    if name.startswith("fail."):
        return servfail(q)
    return None  # A 192.0.2.1 for A queries, NODATA otherwise


@pytest.fixture
def env() -> Iterator[tuple[Running, FakeUpstream]]:
    with FakeUpstream(handler=upstream_handler) as up:
        corefile = f"""
        example.org:0 {{
            bind 127.0.0.1
            errors
            prometheus 127.0.0.1:0
            cache 30
            forward . {up.addr}
        }}
        example.net:0 {{
            bind 127.0.0.1
            prometheus 127.0.0.1:0
            cache 30
            forward . {up.addr}
        }}
        """
        with Running(corefile) as srv:
            yield srv, up


# (name, type, tcp, DO bit, expected rcode)
MIX = [
    ("www.example.org.", "A", False, False, dns.rcode.NOERROR),  # miss -> forward
    ("www.example.org.", "A", False, False, dns.rcode.NOERROR),  # hit
    ("www.example.org.", "A", True, False, dns.rcode.NOERROR),  # hit over TCP
    ("nx.example.org.", "AAAA", False, False, dns.rcode.NXDOMAIN),  # miss
    ("nx.example.org.", "AAAA", True, False, dns.rcode.NXDOMAIN),  # denial hit over TCP
    ("fail.example.org.", "A", False, False, dns.rcode.SERVFAIL),  # upstream SERVFAIL
    ("www.example.org.", "A", False, True, dns.rcode.NOERROR),  # DO: another key, a miss
    ("mail.example.net.", "MX", False, False, dns.rcode.NOERROR),  # NODATA miss
    ("mail.example.net.", "MX", False, False, dns.rcode.NOERROR),  # hit
    ("t.example.net.", "TXT", True, False, dns.rcode.NOERROR),  # miss over TCP
    ("example.com.", "A", False, False, dns.rcode.REFUSED),  # no zone: dropped
]


def row(name: str, **labels: str) -> Key:
    return (name, frozenset(labels.items()))


def expected(server: str) -> dict[Key, float]:
    org = {"server": server, "zone": "example.org.", "view": ""}
    net = {"server": server, "zone": "example.net.", "view": ""}
    drop = {"server": server, "zone": "dropped", "view": ""}
    req, resp = "coredns_dns_requests_total", "coredns_dns_responses_total"
    out: dict[Key, float] = {
        row(req, **org, proto="udp", family="1", type="A"): 4,
        row(req, **org, proto="tcp", family="1", type="A"): 1,
        row(req, **org, proto="udp", family="1", type="AAAA"): 1,
        row(req, **org, proto="tcp", family="1", type="AAAA"): 1,
        row(req, **net, proto="udp", family="1", type="MX"): 2,
        row(req, **net, proto="tcp", family="1", type="TXT"): 1,
        row(req, **drop, proto="udp", family="1", type="A"): 1,
        row(resp, **org, rcode="NOERROR", plugin="forward"): 2,
        row(resp, **org, rcode="NOERROR", plugin="cache"): 2,
        row(resp, **org, rcode="NXDOMAIN", plugin="forward"): 1,
        row(resp, **org, rcode="NXDOMAIN", plugin="cache"): 1,
        row(resp, **org, rcode="SERVFAIL", plugin="forward"): 1,
        row(resp, **net, rcode="NOERROR", plugin="forward"): 2,
        row(resp, **net, rcode="NOERROR", plugin="cache"): 1,
        row(resp, **drop, rcode="REFUSED", plugin=""): 1,
        row("coredns_dns_do_requests_total", **org): 1,
        row("coredns_dns_request_duration_seconds_count", **org): 7,
        row("coredns_dns_request_duration_seconds_count", **net): 3,
        row("coredns_dns_request_duration_seconds_count", **drop): 1,
    }
    for name in ("coredns_dns_request_size_bytes_count", "coredns_dns_response_size_bytes_count"):
        out[row(name, **org, proto="udp")] = 5
        out[row(name, **org, proto="tcp")] = 2
        out[row(name, **net, proto="udp")] = 2
        out[row(name, **net, proto="tcp")] = 1
        out[row(name, **drop, proto="udp")] = 1
    return out


def send_mix(port: int) -> None:
    for name, rdtype, tcp, do, rcode in MIX:
        kw: dict[str, Any] = {"use_edns": 0, "want_dnssec": True} if do else {}
        r = query(port, name, rdtype, tcp=tcp, **kw)
        assert r.rcode() == rcode, (name, rdtype, tcp)


def test_each_server_counter_moves_by_exactly_what_was_sent(
        env: tuple[Running, FakeUpstream]) -> None:
    srv, up = env
    before = scrape(srv)
    send_mix(srv.port)
    after = scrape(srv)
    d = delta(before, after)
    dns_moved = {k: v for k, v in d.items()
                 if k[0].startswith("coredns_dns_") and not k[0].endswith(("_bucket", "_sum"))}
    assert dns_moved == expected(f"dns://127.0.0.1:{srv.port}")
    # the second block's prometheus (the same listener) shows the same counters
    other = scrape(srv, site=1)
    assert {k: v for k, v in other.items() if k[0].startswith("coredns_dns_")} == {
        k: v for k, v in after.items() if k[0].startswith("coredns_dns_")}
    assert up.count() == 6


def test_forward_and_cache_metrics_are_exposed(env: tuple[Running, FakeUpstream]) -> None:
    srv, up = env
    send_mix(srv.port)
    d = delta({}, scrape(srv))
    org = {"server": f"dns://127.0.0.1:{srv.port}", "zones": "example.org."}
    assert d[row("coredns_cache_hits_total", **org, type="success")] == 2
    assert d[row("coredns_cache_hits_total", **org, type="denial")] == 1
    assert d[row("coredns_cache_misses_total", **org)] == 4
    dur = "coredns_proxy_request_duration_seconds_count"
    fwd = {"proxy_name": "forward", "to": up.addr}
    assert d[row(dur, **fwd, rcode="NOERROR")] == 4
    assert d[row(dur, **fwd, rcode="NXDOMAIN")] == 1
    assert d[row(dur, **fwd, rcode="SERVFAIL")] == 1


def test_cache_hits_make_no_prometheus_client_call(
        env: tuple[Running, FakeUpstream], monkeypatch: pytest.MonkeyPatch) -> None:
    srv, up = env
    query(srv.port, "www.example.org.", "A")  # warm the cache
    calls: list[str] = []

    def spy(name: str, real: Any) -> Any:
        def wrapper(self: Any, *a: Any, **kw: Any) -> Any:
            calls.append(name)
            return real(self, *a, **kw)
        return wrapper

    for cls, meth in ((prometheus_client.Counter, "inc"), (prometheus_client.Gauge, "inc"),
                      (prometheus_client.Gauge, "set"), (prometheus_client.Gauge, "dec"),
                      (prometheus_client.Histogram, "observe"),
                      (prometheus_client.Summary, "observe")):
        monkeypatch.setattr(cls, meth, spy(f"{cls.__name__}.{meth}", getattr(cls, meth)))
    for i in range(20):
        assert query(srv.port, "www.example.org.", "A", tcp=bool(i % 2)).answer
    monkeypatch.undo()
    assert calls == []
    assert up.count() == 1
    d = delta({}, scrape(srv))
    hits = row("coredns_cache_hits_total", server=f"dns://127.0.0.1:{srv.port}",
               zones="example.org.", type="success")
    assert d[hits] == 20
