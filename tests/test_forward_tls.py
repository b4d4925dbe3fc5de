"""forward to tls:// upstreams (DNS over TLS, RFC 7858) against a local TLS responder."""

from __future__ import annotations

import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset
import pytest
from harness import Running
from test_forward import sample


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        srv: TLSUpstream = self.server  # type: ignore[assignment]
        conn: ssl.SSLSocket = self.request
        while True:
            head = _read(conn, 2)
            if head is None:
                return
            data = _read(conn, int.from_bytes(head, "big"))
            if data is None:
                return
            q = dns.message.from_wire(data)
            srv.seen.append(q.question[0].name.to_text())
            r = dns.message.make_response(q)
            r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.53"))
            out = r.to_wire()
            conn.sendall(len(out).to_bytes(2, "big") + out)


def _read(conn: ssl.SSLSocket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = conn.recv(n - len(buf))
        except (OSError, ssl.SSLError):
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


class TLSUpstream(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, ctx: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ctx = ctx
        self.seen: list[str] = []
        self.accepted = 0

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = self.socket.accept()
        self.accepted += 1
        sock.settimeout(5)
        try:
            return self.ctx.wrap_socket(sock, server_side=True), addr
        except (OSError, ssl.SSLError):
            sock.close()
            raise

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "1",
         "-subj", "/CN=dns.test", "-addext", "subjectAltName=DNS:dns.test,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30)
    return d


@pytest.fixture
def tls_up(certs: Path) -> Iterator[TLSUpstream]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certs / "cert.pem"), str(certs / "key.pem"))
    srv = TLSUpstream(ctx)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def block(port: int, opts: str) -> str:
    return (f". {{\n bind 127.0.0.1\n forward . tls://127.0.0.1:{port} {{\n{opts}\n"
            f"  read_timeout 1s\n }}\n}}\n")


def test_queries_go_over_tls_and_the_connection_is_reused(tls_up: TLSUpstream,
                                                           certs: Path) -> None:
    with Running(block(tls_up.port, f"tls {certs / 'cert.pem'}\ntls_servername dns.test")) as srv:
        a = srv.query("one.test.")  # a UDP client: still TLS upstream
        b = srv.query("two.test.", tcp=True)
        labels = {"proxy_name": "forward", "to": f"127.0.0.1:{tls_up.port}", "proto": "tcp-tls"}
        assert sample(srv, "coredns_proxy_conn_cache_misses_total", **labels) == 1
        assert sample(srv, "coredns_proxy_conn_cache_hits_total", **labels) == 1
    assert a.rcode() == b.rcode() == dns.rcode.NOERROR
    assert a.answer[0][0].address == "192.0.2.53"
    assert tls_up.seen == ["one.test.", "two.test."] and tls_up.accepted == 1


def test_untrusted_certificate_fails(tls_up: TLSUpstream) -> None:
    with Running(block(tls_up.port, "tls_servername dns.test")) as srv:  # system CAs only
        assert srv.query("x.test.").rcode() == dns.rcode.SERVFAIL
    assert tls_up.seen == []


def test_wrong_server_name_fails(tls_up: TLSUpstream, certs: Path) -> None:
    with Running(block(tls_up.port, f"tls {certs / 'cert.pem'}\ntls_servername other.test")) as srv:
        assert srv.query("x.test.").rcode() == dns.rcode.SERVFAIL
    assert tls_up.seen == []
