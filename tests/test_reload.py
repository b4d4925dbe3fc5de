"""reload: a changed Corefile is swapped in on the same listeners; a broken one is refused."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import dns.rcode
import pytest
from fakeupstream import FakeUpstream, Hold, a_records
from harness import Running, query

from linkdns.config import build_sites
from linkdns.corefile import parse_corefile
from linkdns.errors import ConfigError


def block(up: FakeUpstream, extra: str = "", zone: str = ".") -> str:
    return f"{zone}:0 {{\n bind 127.0.0.1\n reload 2s 1s\n{extra} forward . {up.addr}\n}}\n"


def wait_for(cond: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_changed_corefile_is_swapped_in_on_the_same_port(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="linkdns")
    conf = tmp_path / "Corefile"
    with FakeUpstream() as up1, FakeUpstream() as up2:
        up2.handler = lambda q, p: a_records(q, 1, first="192.0.2.99")
        conf.write_text(block(up1))
        with Running(conf.read_text(), source=str(conf)) as srv:
            port = srv.port
            assert srv.query("a.example.", "A").answer[0][0].address == "192.0.2.1"
            conf.write_text(block(up2))
            assert wait_for(lambda: "Reload completed" in caplog.text, 6), caplog.text
            assert srv.port == port
            r = query(port, "b.example.", "A")
            assert r.answer[0][0].address == "192.0.2.99"


def test_broken_corefile_is_reported_and_the_old_one_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="linkdns")
    conf = tmp_path / "Corefile"
    with FakeUpstream() as up:
        conf.write_text(block(up))
        with Running(conf.read_text(), source=str(conf)) as srv:
            conf.write_text(block(up, extra=" nosuchplugin\n"))
            assert wait_for(lambda: "Restart failed" in caplog.text, 6)
            assert f"Restart failed: {conf}:4 - Unknown directive 'nosuchplugin'" in caplog.text
            assert srv.query("c.example.", "A").rcode() == dns.rcode.NOERROR


def test_query_in_flight_during_a_reload_is_answered() -> None:
    with FakeUpstream() as up:
        gate = threading.Event()  # the upstream answers once the reload has swapped chains
        up.handler = lambda q, p: Hold(gate, a_records(q, 1)) if not gate.is_set() else None
        cf = f".:0 {{\n bind 127.0.0.1\n forward . {up.addr}\n}}\n"
        with Running(cf, drain=10) as srv:  # the reload waits (bounded) for the query
            port = srv.port
            result: list[int] = []
            t = threading.Thread(target=lambda: result.append(
                query(port, "slow.example.", "A", timeout=5).rcode()))
            t.start()
            try:
                up.wait_for(1)
                new = build_sites(parse_corefile(cf.replace("forward", "errors\n forward")), 0)
                reload = asyncio.run_coroutine_threadsafe(srv.server.reload(new), srv.loop)
                deadline = time.monotonic() + 5
                while (srv.run(lambda: srv.server.sites[0].cfg) is not new[0]
                       and time.monotonic() < deadline):
                    time.sleep(0.01)
                assert srv.run(lambda: srv.server.sites[0].cfg) is new[0]  # swapped ...
                assert t.is_alive() and not reload.done()  # ... the query still in flight
            finally:
                gate.set()
            reload.result(10)  # the reload drained it
            t.join(6)
            assert result == [dns.rcode.NOERROR]
            assert srv.port == port
            assert srv.server.sites[0].cfg.plugins.keys() >= {"errors", "forward"}
            assert srv.query("after.example.", "A").rcode() == dns.rcode.NOERROR


@pytest.mark.parametrize(
    ("line", "msg"),
    [
        pytest.param("reload 1s", "greater or equal to 2s", id="interval-too-small"),
        pytest.param("reload 10s 6s", "half of interval", id="jitter-too-big"),
        pytest.param("reload 10s 500ms", "jitter value must be", id="jitter-too-small"),
        pytest.param("reload 1x", "invalid duration", id="bad-duration"),
        pytest.param("reload 10s 2s 1s", "Wrong argument count", id="three-args"),
    ],
)
def test_reload_parse_errors(line: str, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg) as ei:
        build_sites(parse_corefile(f".:53 {{\n {line}\n}}\n"))
    assert ei.value.line == 2
