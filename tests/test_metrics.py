"""prometheus: /metrics over real HTTP, CoreDNS names and labels, counters moved exactly.

These tests need no upstream: a block whose chain falls off its end answers SERVFAIL, names
outside every zone are REFUSED under zone "dropped", and malformed queries are FORMERR /
NOTIMP / BADVERS. The forward/cache mix is in test_metrics_chain.py.
"""

from __future__ import annotations

import gzip
import socket
import struct
import sys
from collections.abc import Iterator

import dns.edns
import dns.message
import dns.rcode
import pytest
from harness import Running, http_get, query, raw, setup_plugin
from prometheus_client.parser import text_string_to_metric_families

from linkdns import __version__
from linkdns.corefile import parse_corefile
from linkdns.errors import ConfigError
from linkdns.metrics import cumulative, go_float
from linkdns.plugins import prometheus
from linkdns.server.stats import SIZE_BUCKETS, TIME_BUCKETS, Hist

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

COREFILE = """
example.org:0 {
    bind 127.0.0.1
    errors
    prometheus 127.0.0.1:0
}
example.net:0 {
    bind 127.0.0.1
    errors
}
"""


def scrape(srv: Running, site: int = 0) -> Samples:
    status, headers, body = http_get(setup_plugin(srv, "prometheus", site).port, "/metrics")
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(body.decode())


def parse(text: str) -> Samples:
    """Every sample, keyed by (name, labels), via prometheus-client's own text parser."""
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(samples: Samples, metric: str, **labels: str) -> float:
    """A sample's value (0 when absent: a series appears with its first count)."""
    return samples.get((metric, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    keys = set(before) | set(after)
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys
            if after.get(k, 0.0) != before.get(k, 0.0)}


@pytest.fixture(scope="module")
def srv() -> Iterator[Running]:
    with Running(COREFILE) as s:
        yield s


def server_label(srv: Running) -> str:
    return f"dns://127.0.0.1:{srv.port}"


# -- pure pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(0, "0", id="zero"),
        pytest.param(100, "100", id="integer"),
        pytest.param(16e3, "16000", id="16e3"),
        pytest.param(0.00025, "0.00025", id="quarter-ms"),
        pytest.param(8.192, "8.192", id="fraction"),
        pytest.param(1e6, "1e+06", id="go-exponent-at-1e6"),
        pytest.param(1e-5, "1e-05", id="small-exponent"),
        pytest.param(float("inf"), "+Inf", id="inf"),
    ],
)
def test_bucket_bounds_are_written_as_go_writes_them(value: float, text: str) -> None:
    assert go_float(value) == text


def test_buckets_are_cumulative_and_end_with_inf() -> None:
    h = Hist((1.0, 10.0))
    for v in (0.5, 1.0, 5.0, 50.0, 60.0):
        h.observe(v)
    assert cumulative(h) == [("1", 2), ("10", 3), ("+Inf", 5)]


def test_coredns_bucket_boundaries() -> None:
    assert [go_float(b) for b in TIME_BUCKETS][:3] == ["0.00025", "0.0005", "0.001"]
    assert go_float(TIME_BUCKETS[-1]) == "8.192" and len(TIME_BUCKETS) == 16
    assert [go_float(b) for b in SIZE_BUCKETS] == [
        "0", "100", "200", "300", "400", "511", "1023", "2047", "4095", "8291", "16000",
        "32000", "48000", "64000"]


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        pytest.param("prometheus", "localhost", 9153, id="default"),
        pytest.param("prometheus :9253", "", 9253, id="all-interfaces"),
        pytest.param("prometheus 127.0.0.1:0", "127.0.0.1", 0, id="ephemeral"),
        pytest.param("prometheus [::1]:9153", "::1", 9153, id="ipv6"),
    ],
)
def test_parse(text: str, host: str, port: int) -> None:
    d = parse_corefile(f". {{\n{text}\n}}", "Corefile")[0].directives[0]
    assert prometheus.parse(d) == prometheus.PrometheusConfig(host, port)


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        pytest.param("prometheus localhost", "missing port", id="no-port"),
        pytest.param("prometheus localhost:99999", "invalid port", id="bad-port"),
        pytest.param("prometheus a:1 b:2", "Wrong argument count", id="two-args"),
        pytest.param("prometheus :9153 {\ntls a b\n}", "not supported", id="tls"),
        pytest.param("prometheus :9153 {\nfoo\n}", "unknown option: foo", id="unknown"),
    ],
)
def test_parse_errors(text: str, msg: str) -> None:
    d = parse_corefile(f". {{\n{text}\n}}", "Corefile")[0].directives[0]
    with pytest.raises(ConfigError, match=msg) as e:
        prometheus.parse(d)
    assert e.value.line == 2 and e.value.plugin == "prometheus"


# -- over HTTP ----------------------------------------------------------------------------------


def test_exposition_parses_and_has_build_info_and_panics(srv: Running) -> None:
    s = scrape(srv)
    py = "python" + sys.version.split()[0]
    assert get(s, "coredns_build_info", version=__version__, revision="", goversion=py) == 1
    assert get(s, "coredns_panics_total") == 0
    assert ("coredns_panics_total", frozenset()) in s
    assert not [k for k in s if k[0].endswith("_created")]


def test_plugin_enabled_lists_the_chain_of_blocks_with_prometheus(srv: Running) -> None:
    s = scrape(srv)
    rows = {dict(labels)["name"] for (name, labels) in s if name == "coredns_plugin_enabled"}
    assert rows == {"errors", "prometheus"}
    lab = {"server": server_label(srv), "zone": "example.org.", "view": "", "name": "errors"}
    assert get(s, "coredns_plugin_enabled", **lab) == 1


def test_servfail_from_the_chain_is_counted_under_its_zone(srv: Running) -> None:
    before = scrape(srv)
    for tcp in (False, True, False):
        assert srv.query("www.example.org.", "MX", tcp=tcp).rcode() == dns.rcode.SERVFAIL
    after = scrape(srv)
    z = {"server": server_label(srv), "zone": "example.org.", "view": ""}
    d = delta(before, after)
    req = "coredns_dns_requests_total"
    assert d.pop((req, frozenset({**z, "proto": "udp", "family": "1", "type": "MX"}.items()))) == 2
    assert d.pop((req, frozenset({**z, "proto": "tcp", "family": "1", "type": "MX"}.items()))) == 1
    resp = ("coredns_dns_responses_total",
            frozenset({**z, "rcode": "SERVFAIL", "plugin": ""}.items()))
    assert d.pop(resp) == 3
    assert d.pop(("coredns_dns_request_duration_seconds_count", frozenset(z.items()))) == 3
    for name in ("coredns_dns_request_size_bytes_count", "coredns_dns_response_size_bytes_count"):
        assert d.pop((name, frozenset({**z, "proto": "udp"}.items()))) == 2
        assert d.pop((name, frozenset({**z, "proto": "tcp"}.items()))) == 1
    # nothing else counted but sums and buckets of those same series
    dns_moved = [k for k in d if k[0].startswith("coredns_")]
    assert all(k[0].endswith(("_sum", "_bucket")) for k in dns_moved), dns_moved


def test_do_bit_is_counted(srv: Running) -> None:
    z = {"server": server_label(srv), "zone": "example.org.", "view": ""}
    before = get(scrape(srv), "coredns_dns_do_requests_total", **z)
    srv.query("a.example.org.", "A", use_edns=0, want_dnssec=True)
    srv.query("a.example.org.", "A", use_edns=0, want_dnssec=False)
    assert get(scrape(srv), "coredns_dns_do_requests_total", **z) == before + 1


def test_request_and_response_sizes_land_in_coredns_buckets(srv: Running) -> None:
    z = {"server": server_label(srv), "zone": "example.org.", "view": "", "proto": "udp"}
    before = scrape(srv)
    q = dns.message.make_query("sizes.example.org.", "A")  # 35 bytes, answer the same + QR
    size = len(q.to_wire())
    assert size < 100
    srv.query("sizes.example.org.", "A")
    d = delta(before, scrape(srv))
    for name in ("coredns_dns_request_size_bytes", "coredns_dns_response_size_bytes"):
        assert d[(f"{name}_bucket", frozenset({**z, "le": "100"}.items()))] == 1
        assert (f"{name}_bucket", frozenset({**z, "le": "0"}.items())) not in d
        assert d[(f"{name}_bucket", frozenset({**z, "le": "+Inf"}.items()))] == 1
        assert d[(f"{name}_sum", frozenset(z.items()))] == size


def test_refused_outside_every_zone_counts_under_dropped(srv: Running) -> None:
    before = scrape(srv)
    assert srv.query("example.com.", "AAAA").rcode() == dns.rcode.REFUSED
    assert srv.query("example.com.", "TYPE65280", tcp=True).rcode() == dns.rcode.REFUSED
    d = delta(before, scrape(srv))
    z = {"server": server_label(srv), "zone": "dropped", "view": ""}
    req = "coredns_dns_requests_total"
    assert d[(req, frozenset({**z, "proto": "udp", "family": "1", "type": "AAAA"}.items()))] == 1
    assert d[(req, frozenset({**z, "proto": "tcp", "family": "1", "type": "other"}.items()))] == 1
    resp = ("coredns_dns_responses_total",
            frozenset({**z, "rcode": "REFUSED", "plugin": ""}.items()))
    assert d[resp] == 2


def header(flags: int = 0x0100, qd: int = 1, ar: int = 0) -> bytes:
    return struct.pack(">HHHHHH", 0x4242, flags, qd, 0, 0, ar)


QUESTION = b"\x07example\x03org\x00\x00\x01\x00\x01"


@pytest.mark.parametrize(
    ("data", "rcode"),
    [
        pytest.param(header(flags=0x2800) + QUESTION, "NOTIMP", id="opcode-update"),
        pytest.param(header(qd=2) + QUESTION + QUESTION, "FORMERR", id="two-questions"),
        pytest.param(
            dns.message.make_query("example.org.", "A", use_edns=1).to_wire(), "BADVERS",
            id="edns-version-1"),
        pytest.param(header() + QUESTION[:-4] + b"\x00\x01\x00\x03", "REFUSED", id="class-chaos"),
    ],
)
def test_malformed_queries_count_under_dropped_with_their_rcode(
        srv: Running, data: bytes, rcode: str) -> None:
    before = scrape(srv)
    assert raw(srv.port, data) is not None
    d = delta(before, scrape(srv))
    z = {"server": server_label(srv), "zone": "dropped", "view": ""}
    resp = ("coredns_dns_responses_total", frozenset({**z, "rcode": rcode, "plugin": ""}.items()))
    assert d[resp] == 1
    assert sum(v for k, v in d.items() if k[0] == "coredns_dns_requests_total") == 1


def test_unanswerable_datagrams_count_as_dropped_requests(srv: Running) -> None:
    before = scrape(srv)
    assert raw(srv.port, b"\x12\x34\x01", timeout=0.3) is None
    d = delta(before, scrape(srv))
    z = {"server": server_label(srv), "zone": "dropped", "view": ""}
    lab = {**z, "proto": "udp", "family": "1", "type": "other"}
    assert d[("coredns_dns_requests_total", frozenset(lab.items()))] == 1
    assert not [k for k in d if k[0] == "coredns_dns_responses_total"]


def test_blocks_without_prometheus_are_not_exported(srv: Running) -> None:
    srv.query("www.example.net.", "A")
    s = scrape(srv)
    assert not [k for k in s if ("zone", "example.net.") in k[1]]
    # ... though the server counted them
    zs = srv.server.stats.zones[(server_label(srv), "example.net.")]
    assert sum(zs.requests.values()) >= 1


# -- the HTTP endpoint ----------------------------------------------------------------------------


def test_gzip_when_accepted(srv: Running) -> None:
    port = setup_plugin(srv, "prometheus").port
    status, headers, body = http_get(port, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert b"coredns_build_info" in gzip.decompress(body)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/nope", 404, id="unknown-path"),
        pytest.param("GET", "/health", 404, id="health-not-here"),
        pytest.param("POST", "/metrics", 405, id="post"),
        pytest.param("HEAD", "/metrics", 200, id="head"),
        pytest.param("GET", "/metrics?x=1", 200, id="query-string"),
    ],
)
def test_http_status(srv: Running, method: str, path: str, status: int) -> None:
    port = setup_plugin(srv, "prometheus").port
    got, headers, body = http_get(port, path, method=method)
    assert got == status
    assert headers["connection"] == "close"
    if method == "HEAD":
        assert body == b"" and int(headers["content-length"]) > 0


def test_oversized_or_garbage_requests_get_an_error_not_a_hang(srv: Running) -> None:
    port = setup_plugin(srv, "prometheus").port
    for payload, code in ((b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n", b"431"),
                          (b"BLAH\r\n\r\n", b"400")):
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(payload)
            assert s.recv(100).split(b" ")[1] == code
    assert http_get(port, "/metrics")[0] == 200


def test_two_blocks_share_one_prometheus_listener() -> None:
    corefile = """
    example.org:0 {
        bind 127.0.0.1
        errors
        prometheus 127.0.0.1:0
    }
    example.net:0 {
        bind 127.0.0.1
        errors
        prometheus 127.0.0.1:0
    }
    """
    with Running(corefile, dns_port=0) as s:
        p0, p1 = setup_plugin(s, "prometheus", 0), setup_plugin(s, "prometheus", 1)
        assert p0.http is p1.http and p0.port == p1.port != 0
        query(s.port, "a.example.org.", "A")
        query(s.port, "b.example.net.", "A")
        query(s.port, "c.example.net.", "A", tcp=True)
        m = scrape(s)
        label = f"dns://127.0.0.1:{s.port}"
        for zone, n in (("example.org.", 1), ("example.net.", 2)):
            assert get(m, "coredns_dns_responses_total", server=label, zone=zone, view="",
                       rcode="SERVFAIL", plugin="") == n
        # the server collector is registered once in the shared registry
        text = http_get(p0.port, "/metrics")[2].decode()
        assert text.count("# TYPE coredns_dns_requests_total counter") == 1
    # the listener closed with the server
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p0.port), timeout=1).close()


def test_taken_address_fails_start() -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        port = blocker.getsockname()[1]
        corefile = f"example.org:0 {{\nbind 127.0.0.1\nprometheus 127.0.0.1:{port}\n}}"
        with pytest.raises(OSError), Running(corefile):
            pass
    finally:
        blocker.close()
