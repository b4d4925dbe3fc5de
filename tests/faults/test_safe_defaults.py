"""Safe defaults: without bind, linkdns warns at start-up that it answers on every address; the
documented acl recipe restricts who is answered."""

from __future__ import annotations

import logging
import socket

import dns.message
import dns.rcode
import pytest
from fakeupstream import FakeUpstream
from harness import Running


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "no bind" in r.getMessage()]


def test_no_bind_warns_once_per_port(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with Running(".:0 {\n errors\n}\nexample.org:0 {\n errors\n}\n") as srv:
        ports = {ln.port for ln in srv.server.listeners.values()}
    msgs = warnings(caplog)
    assert len(msgs) == len(ports) >= 1
    assert "every IPv4 address" in msgs[0] and "acl" in msgs[0]


def test_bind_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with Running(".:0 {\n bind 127.0.0.1\n errors\n}\n"):
        pass
    assert warnings(caplog) == []


def ask_from(source: str, port: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(2)
        s.sendto(dns.message.make_query("a.example.", "A").to_wire(), ("127.0.0.1", port))
        return dns.message.from_wire(s.recv(512)).rcode()


def test_acl_recipe_answers_only_the_allowed_clients(up: FakeUpstream) -> None:
    cf = f""".:0 {{
    bind 127.0.0.1
    acl {{
        allow net 127.0.0.1/32
        block
    }}
    forward . {up.addr}
}}
"""
    with Running(cf) as srv:
        assert ask_from("127.0.0.1", srv.port) == dns.rcode.NOERROR
        assert ask_from("127.0.0.2", srv.port) == dns.rcode.REFUSED
