"""Crash containment: an exception inside a plugin, on the slow path or on the cache-hit path,
answers SERVFAIL, logs once with the query, counts in ``coredns_panics_total`` and the server
keeps serving."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import dns.rcode
import pytest
from fakeupstream import FakeUpstream
from harness import Running

from linkdns.request import Request
from linkdns.writer import Writer

COREFILE = """
.:0 {{
    bind 127.0.0.1
    cache 60
    forward . {up}
}}
"""


@pytest.fixture
def srv(up: FakeUpstream) -> Iterator[Running]:
    with Running(COREFILE.format(up=up.addr)) as s:
        yield s


def panics(srv: Running) -> int:
    return srv.server.stats.panics


def handler(srv: Running, name: str) -> Any:
    return next(h for h in srv.server.sites[0].handlers if h.name == name)


def panic_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "panic while serving" in r.getMessage()]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_exception_in_a_slow_path_plugin(srv: Running, caplog: pytest.LogCaptureFixture,
                                          tcp: bool) -> None:
    fwd = handler(srv, "forward")
    real = fwd.serve

    async def boom(req: Request, w: Writer) -> int:
        if req.name.startswith("boom."):
            raise RuntimeError("plugin bug")
        rc: int = await real(req, w)
        return rc

    fwd.serve = boom
    caplog.set_level(logging.ERROR)
    assert srv.query("boom.example.", tcp=tcp).rcode() == dns.rcode.SERVFAIL
    assert panics(srv) == 1
    [rec] = panic_lines(caplog)
    assert "boom.example." in rec.getMessage() and rec.exc_info is not None
    # still serving, the same connection kind and the other
    assert srv.query("fine.example.", tcp=tcp).rcode() == dns.rcode.NOERROR
    assert srv.query("fine2.example.", tcp=not tcp).rcode() == dns.rcode.NOERROR


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("warm", [1, 3], ids=["first-hit", "later-hit"])
def test_exception_on_the_cache_hit_path(srv: Running, caplog: pytest.LogCaptureFixture,
                                         tcp: bool, warm: int) -> None:
    for _ in range(warm):  # miss, then hits
        assert srv.query("hit.example.", tcp=tcp).rcode() == dns.rcode.NOERROR
    cache = srv.server.sites[0].cache
    assert cache is not None
    real = cache.hit_wire

    def boom(key: bytes, data: bytes, qe: int, opt: bytes, size: int) -> Any:
        if b"\x03hit" in data:
            raise RuntimeError("cache bug")
        return real(key, data, qe, opt, size)

    cache.hit_wire = boom  # type: ignore[method-assign]
    caplog.set_level(logging.ERROR)
    r = srv.query("hit.example.", tcp=tcp)
    assert r.rcode() == dns.rcode.SERVFAIL and r.question[0].name.to_text() == "hit.example."
    assert panics(srv) == 1
    [rec] = panic_lines(caplog)
    assert "hit.example." in rec.getMessage()
    # the listener still serves other names, over both transports, and the name itself once
    # the bug is gone
    assert srv.query("other.example.", tcp=tcp).rcode() == dns.rcode.NOERROR
    assert srv.query("other.example.", tcp=not tcp).rcode() == dns.rcode.NOERROR
    cache.hit_wire = real  # type: ignore[method-assign]
    assert srv.query("hit.example.", tcp=tcp).rcode() == dns.rcode.NOERROR
