"""The cache-hit path makes no task, parses nothing with dnslib and builds no Request."""

from __future__ import annotations

from typing import Any

import dnslib
import pytest
from fakeupstream import FakeUpstream
from harness import Running

import linkdns.request
from linkdns.server.lifecycle import Server


@pytest.mark.parametrize("edns", [False, True])
def test_hits_take_the_synchronous_path(monkeypatch: pytest.MonkeyPatch, edns: bool) -> None:
    with FakeUpstream() as up, Running(
            f".:0 {{\n bind 127.0.0.1\n errors\n cache 60\n forward . {up.addr}\n}}\n") as srv:
        kw: dict[str, Any] = {"use_edns": 0, "payload": 1232} if edns else {}
        names = [f"h{i}.example." for i in range(5)]
        for n in names:
            srv.query(n, "A", **kw)  # misses: fill the cache
        calls = {"spawn": 0, "parse": 0, "request": 0}

        def count(what: str, real: Any) -> Any:
            def wrapper(*a: Any, **k: Any) -> Any:
                calls[what] += 1
                return real(*a, **k)
            return wrapper

        monkeypatch.setattr(Server, "spawn", count("spawn", Server.spawn))
        monkeypatch.setattr(dnslib.DNSRecord, "parse",
                            staticmethod(count("parse", dnslib.DNSRecord.parse)))
        monkeypatch.setattr(linkdns.request.Request, "__init__",
                            count("request", linkdns.request.Request.__init__))
        for _ in range(10):
            for n in names:
                r = srv.query(n.upper(), "A", **kw)
                assert r.answer and str(r.question[0].name) == n.upper()
        assert calls == {"spawn": 0, "parse": 0, "request": 0}
        assert len(up.queries) == 5
