"""TCP limits (idle timeout, connection cap), bind addresses, and the log plugin's filters."""

from __future__ import annotations

import logging
import socket
import threading
import time

import dns.exception
import dns.message
import dns.rcode
import pytest
from fakeupstream import FakeUpstream, Hold
from harness import Running, query

from linkdns.server import tcp


def _recv_or_closed(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    try:
        return s.recv(100)
    except TimeoutError:
        return b"timeout"
    except ConnectionResetError:
        return b""


def test_idle_tcp_connection_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp, "TCP_IDLE_TIMEOUT", 0.3)
    with Running(".:0 {\n bind 127.0.0.1\n errors\n}\n") as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
        t0 = time.monotonic()
        assert _recv_or_closed(s, 3) == b""  # EOF: the server closed the idle connection
        assert 0.2 < time.monotonic() - t0 < 2.5
        s.close()


def _answer(s: socket.socket, name: str) -> int:
    q = dns.message.make_query(name, "A").to_wire()
    s.sendall(len(q).to_bytes(2, "big") + q)
    s.settimeout(3)
    n = int.from_bytes(s.recv(2), "big")
    return dns.message.from_wire(s.recv(n)).rcode()


def test_tcp_connections_are_capped_the_longest_idle_makes_room(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp, "TCP_MAX_CONNECTIONS", 2)
    with Running(".:0 {\n bind 127.0.0.1\n errors\n}\n") as srv:
        (ln,) = srv.server.listeners.values()
        keep = []
        for _ in range(2):
            keep.append(socket.create_connection(("127.0.0.1", srv.port), timeout=3))
            deadline = time.monotonic() + 5  # until the server has accounted for it
            while srv.run(lambda: len(ln.tcp_conns)) < len(keep) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.01)  # distinct "last activity" times
        assert _answer(keep[1], "b.example.org.") == dns.rcode.SERVFAIL  # keep[1] active
        extra = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
        # over the cap: the new client is served, the connection idle the longest closed
        assert _answer(extra, "c.example.org.") == dns.rcode.SERVFAIL
        assert _recv_or_closed(keep[0], 2) == b""
        assert _answer(keep[1], "d.example.org.") == dns.rcode.SERVFAIL
        assert srv.run(lambda: len(ln.tcp_conns)) == 2
        for s in [*keep, extra]:
            s.close()


def test_tcp_connection_over_the_cap_refused_when_all_have_work_in_flight(
        monkeypatch: pytest.MonkeyPatch, up: FakeUpstream) -> None:
    monkeypatch.setattr(tcp, "TCP_MAX_CONNECTIONS", 2)
    gate = threading.Event()
    up.handler = lambda q, p: Hold(gate)
    with Running(f".:0 {{\n bind 127.0.0.1\n forward . {up.addr}\n}}\n") as srv:
        keep = [socket.create_connection(("127.0.0.1", srv.port), timeout=3) for _ in range(2)]
        for i, s in enumerate(keep):
            q = dns.message.make_query(f"busy{i}.example.", "A").to_wire()
            s.sendall(len(q).to_bytes(2, "big") + q)
        up.wait_for(2)
        try:
            extra = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
            assert _recv_or_closed(extra, 2) == b""  # closed at once: no room
            (ln,) = srv.server.listeners.values()
            assert srv.server.stats.drops[(ln.name, "tcp_limit")] == 1
        finally:
            gate.set()
        for s in keep:
            s.settimeout(3)
            n = int.from_bytes(s.recv(2), "big")
            assert dns.message.from_wire(s.recv(n)).rcode() == dns.rcode.NOERROR
            s.close()
        extra.close()


def test_bind_listens_only_on_the_given_address() -> None:
    with Running(".:0 {\n bind 127.0.0.2\n errors\n}\n") as srv:
        port = srv.port
        assert query(port, "example.org.", host="127.0.0.2").rcode() == dns.rcode.SERVFAIL
        with pytest.raises(dns.exception.Timeout):
            query(port, "example.org.", host="127.0.0.1", timeout=0.3)


def test_bind_several_addresses_and_interface_except() -> None:
    cf = ".:0 {\n bind lo {\n  except ::1 127.0.0.1\n }\n errors\n}\n"
    with pytest.raises(Exception, match="no address left"):
        Running(cf)
    with Running(".:0 {\n bind 127.0.0.3 127.0.0.4\n errors\n}\n") as srv:
        ports = {ln.host: ln.port for ln in srv.server.listeners.values()}
        assert set(ports) == {"127.0.0.3", "127.0.0.4"}
        for host, port in ports.items():
            assert query(port, "a.example.", host=host).rcode() == dns.rcode.SERVFAIL


@pytest.mark.parametrize(
    ("log_line", "name", "logged"),
    [
        pytest.param("log", "x.example.org.", True, id="all"),
        pytest.param("log example.org", "x.example.org.", True, id="name-in-zone"),
        pytest.param("log example.com", "x.example.org.", False, id="name-outside"),
        pytest.param("log {\n class success\n }", "x.example.org.", False, id="class-success"),
        pytest.param("log {\n class error\n }", "x.example.org.", True, id="class-error"),
    ],
)
def test_log_filters(caplog: pytest.LogCaptureFixture, log_line: str, name: str,
                     logged: bool) -> None:
    caplog.set_level(logging.INFO, logger="linkdns")
    with Running(f".:0 {{\n bind 127.0.0.1\n {log_line}\n}}\n") as srv:
        srv.query(name, "A")
    lines = [r.getMessage() for r in caplog.records if r.name == "linkdns.plugin.log"]
    assert bool(lines) == logged
    if logged:
        assert f'"A IN {name} udp ' in lines[0] and " SERVFAIL qr,rd,ra " in lines[0]


def test_log_custom_format(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="linkdns")
    with Running('.:0 {\n bind 127.0.0.1\n log . "{name} {type} {rcode} {proto}"\n}\n') as srv:
        srv.query("Fmt.Example.", "AAAA", tcp=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "linkdns.plugin.log"]
    assert lines == ["fmt.example. AAAA SERVFAIL tcp"]


def test_tcp_pipeline_over_the_cap_is_refused_and_the_rest_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tcp, "TCP_MAX_PENDING", 2)
    with FakeUpstream() as up:
        gate = threading.Event()  # the upstream holds the first two until a reply arrives
        up.handler = lambda q, p: Hold(gate)
        with Running(f".:0 {{\n bind 127.0.0.1\n forward . {up.addr}\n}}\n") as srv:
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
            payload = b""
            for i in range(3):
                w = dns.message.make_query(f"p{i}.example.", "A").to_wire()
                payload += len(w).to_bytes(2, "big") + w
            got = {}
            try:
                s.sendall(payload)
                buf = b""
                while len(got) < 3:
                    chunk = s.recv(65535)
                    assert chunk
                    buf += chunk
                    while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                        n = int.from_bytes(buf[:2], "big")
                        m = dns.message.from_wire(buf[2 : 2 + n])
                        got[str(m.question[0].name)] = m.rcode()
                        buf = buf[2 + n :]
                        gate.set()
            finally:
                gate.set()
                s.close()
    assert got == {"p0.example.": dns.rcode.NOERROR, "p1.example.": dns.rcode.NOERROR,
                   "p2.example.": dns.rcode.REFUSED}
