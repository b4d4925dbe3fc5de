"""Nothing lost silently: every query linkdns receives and does not answer is counted in
``linkdns_dropped_queries_total{server, reason}``, and slow-path work in progress shows in
``linkdns_queries_in_flight{server}``."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import dns.message
import dns.rcode
import pytest
from fakeupstream import FakeUpstream, Hold
from harness import Running, http_get, raw, setup_plugin
from prometheus_client.parser import text_string_to_metric_families

from linkdns.server.stats import DROP_REASONS

COREFILE = """
.:0 {{
    bind 127.0.0.1
    prometheus 127.0.0.1:0
    acl {{
        drop type MX
    }}
    forward . {up}
}}
"""


def metrics(srv: Running) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, _, body = http_get(setup_plugin(srv, "prometheus").port, "/metrics")
    assert status == 200
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def dropped(srv: Running, reason: str) -> float:
    key = ("linkdns_dropped_queries_total",
           frozenset({"server": f"dns://127.0.0.1:{srv.port}", "reason": reason}.items()))
    return metrics(srv)[key]


def in_flight(srv: Running) -> float:
    key = ("linkdns_queries_in_flight",
           frozenset({"server": f"dns://127.0.0.1:{srv.port}"}.items()))
    return metrics(srv)[key]


@pytest.fixture
def srv(up: FakeUpstream) -> Iterator[Running]:
    with Running(COREFILE.format(up=up.addr)) as s:
        yield s


def test_every_reason_is_exported_from_zero(srv: Running) -> None:
    assert [dropped(srv, r) for r in DROP_REASONS] == [0.0] * len(DROP_REASONS)
    assert in_flight(srv) == 0


@pytest.mark.parametrize("data", [
    pytest.param(b"\x12\x34\x01", id="shorter-than-a-header"),
    pytest.param(b"\x12\x34\x81\x80" + bytes(8), id="a-response"),
])
def test_a_datagram_dropped_unanswered_counts_as_malformed(srv: Running, data: bytes) -> None:
    assert raw(srv.port, data, timeout=0.3) is None
    assert dropped(srv, "malformed") == 1


def test_acl_drop_counts(srv: Running) -> None:
    q = dns.message.make_query("x.example.", "MX")
    assert raw(srv.port, q.to_wire(), timeout=0.3) is None
    assert dropped(srv, "acl") == 1


def test_tcp_frame_left_unfinished_counts_when_the_idle_timer_closes_it(
        srv: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    from linkdns.server import tcp
    monkeypatch.setattr(tcp, "TCP_IDLE_TIMEOUT", 0.2)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=2) as s:
        s.sendall(b"\x00\x40\x12\x34")  # promises 64 bytes, sends 2
        assert s.recv(10) == b""  # closed by the server
    assert dropped(srv, "tcp_timeout") == 1


def test_in_flight_gauge_follows_the_slow_path(srv: Running, up: FakeUpstream) -> None:
    gate = threading.Event()
    up.handler = lambda q, p: Hold(gate)
    socks = []
    for i in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(dns.message.make_query(f"n{i}.example.", "A").to_wire(), ("127.0.0.1", srv.port))
        socks.append(s)
    up.wait_for(3)
    assert in_flight(srv) == 3
    gate.set()
    for s in socks:
        assert dns.message.from_wire(s.recv(512)).rcode() == dns.rcode.NOERROR
        s.close()
    deadline = time.monotonic() + 2
    while in_flight(srv) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert in_flight(srv) == 0
