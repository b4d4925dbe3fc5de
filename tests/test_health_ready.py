"""health and ready over real HTTP: start-up, normal service, lame duck, self-check metrics."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import pytest
from harness import Running, free_port, http_get, query, setup_plugin
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from linkdns.cli import new_event_loop
from linkdns.corefile import parse_corefile
from linkdns.errors import ConfigError
from linkdns.plugin import SetupPlugin
from linkdns.plugins import health, ready
from linkdns.server.lifecycle import Server

# -- parsing -------------------------------------------------------------------------------


def directive(text: str):  # type: ignore[no-untyped-def]
    return parse_corefile(f". {{\n{text}\n}}", "Corefile")[0].directives[0]


@pytest.mark.parametrize(
    ("text", "cfg"),
    [
        pytest.param("health", health.HealthConfig("", 8080, 0.0), id="default"),
        pytest.param("health localhost:8091", health.HealthConfig("localhost", 8091), id="addr"),
        pytest.param("health :8092 {\nlameduck 1s\n}", health.HealthConfig("", 8092, 1.0),
                     id="lameduck"),
        pytest.param("health {\nlameduck 1m30s\n}", health.HealthConfig("", 8080, 90.0),
                     id="lameduck-default-addr"),
    ],
)
def test_health_parse(text: str, cfg: health.HealthConfig) -> None:
    assert health.parse(directive(text)) == cfg


@pytest.mark.parametrize(
    ("text", "msg", "line"),
    [
        pytest.param("health 8080", "missing port", 2, id="no-colon"),
        pytest.param("health a:1 b:2", "Wrong argument count", 2, id="two-args"),
        pytest.param("health {\nlameduck\n}", "Wrong argument count", 3, id="lameduck-no-arg"),
        pytest.param("health {\nlameduck soon\n}", "unable to parse lameduck duration", 3,
                     id="lameduck-bad"),
        pytest.param("health {\nfoo 1\n}", "unknown property 'foo'", 3, id="unknown"),
    ],
)
def test_health_parse_errors(text: str, msg: str, line: int) -> None:
    with pytest.raises(ConfigError, match=msg) as e:
        health.parse(directive(text))
    assert e.value.line == line and e.value.plugin == "health"


@pytest.mark.parametrize(
    ("text", "cfg"),
    [
        pytest.param("ready", ready.ReadyConfig("", 8181, False), id="default"),
        pytest.param("ready 127.0.0.1:9999", ready.ReadyConfig("127.0.0.1", 9999), id="addr"),
        pytest.param("ready {\nmonitor continuously\n}", ready.ReadyConfig("", 8181, True),
                     id="continuously"),
        pytest.param("ready {\nmonitor until-ready\n}", ready.ReadyConfig(), id="until-ready"),
    ],
)
def test_ready_parse(text: str, cfg: ready.ReadyConfig) -> None:
    assert ready.parse(directive(text)) == cfg


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        pytest.param("ready :x", "invalid port", id="bad-port"),
        pytest.param("ready {\nmonitor sometimes\n}", "monitor type 'sometimes' not supported",
                     id="bad-monitor"),
        pytest.param("ready {\nbogus\n}", "unknown property 'bogus'", id="unknown"),
    ],
)
def test_ready_parse_errors(text: str, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        ready.parse(directive(text))


# -- normal service -------------------------------------------------------------------------

COREFILE = """
example.org:0 {
    bind 127.0.0.1
    errors
    health 127.0.0.1:0
    ready 127.0.0.1:0
}
"""


class Flag(SetupPlugin):
    """A plugin whose readiness the test sets."""

    def __init__(self, name: str) -> None:
        self.name = name  # type: ignore[misc]
        self.is_ready = False

    def ready(self) -> bool:
        return self.is_ready


def test_health_and_ready_answer_ok() -> None:
    with Running(COREFILE) as s:
        assert http_get(setup_plugin(s, "health").port, "/health")[::2] == (200, b"OK")
        assert http_get(setup_plugin(s, "ready").port, "/ready")[::2] == (200, b"OK")


@pytest.mark.parametrize("continuously", [pytest.param(False, id="until-ready"),
                                          pytest.param(True, id="continuously")])
def test_ready_names_the_plugins_not_ready(continuously: bool) -> None:
    monitor = "{\nmonitor continuously\n}" if continuously else ""
    corefile = COREFILE.replace("ready 127.0.0.1:0", f"ready 127.0.0.1:0 {monitor}")
    with Running(corefile) as s:
        port = setup_plugin(s, "ready").port
        beta, alpha = Flag("beta"), Flag("alpha")
        s.run(lambda: s.server.sites[0].setups.extend([beta, alpha]))
        assert http_get(port, "/ready")[::2] == (503, b"alpha,beta")
        alpha.is_ready = True
        assert http_get(port, "/ready")[::2] == (503, b"beta")
        beta.is_ready = True
        assert http_get(port, "/ready")[::2] == (200, b"OK")
        alpha.is_ready = False  # a plugin that regresses
        want = (503, b"alpha") if continuously else (200, b"OK")
        assert http_get(port, "/ready")[::2] == want


def test_health_ready_and_metrics_can_share_one_address() -> None:
    corefile = COREFILE.replace("ready 127.0.0.1:0", "ready 127.0.0.1:0\nprometheus 127.0.0.1:0")
    with Running(corefile) as s:
        plugins = [setup_plugin(s, n) for n in ("health", "ready", "prometheus")]
        assert len({id(p.http) for p in plugins}) == 1
        port = plugins[0].port
        assert http_get(port, "/health")[0] == 200
        assert http_get(port, "/ready")[0] == 200
        assert http_get(port, "/metrics")[0] == 200
        assert http_get(port, "/other")[0] == 404


def health_samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name.startswith("coredns_health"):
            for smp in fam.samples:
                if "le" not in smp.labels:
                    out[smp.name] = smp.value
    return out


def test_self_check_feeds_the_health_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "CHECK_INTERVAL", 0.02)
    corefile = COREFILE.replace("ready 127.0.0.1:0", "prometheus 127.0.0.1:0")
    with Running(corefile) as s:
        h = setup_plugin(s, "health")
        s.call(asyncio.wait_for(h.checked.wait(), 5))
        m = health_samples(http_get(setup_plugin(s, "prometheus").port, "/metrics")[2].decode())
        assert m["coredns_health_request_duration_seconds_count"] >= 1
        assert m["coredns_health_request_failures_total"] == 0
        # a check that cannot connect counts a failure
        assert s.call(h.check_once("127.0.0.1", free_port())) is False
        m = health_samples(http_get(setup_plugin(s, "prometheus").port, "/metrics")[2].decode())
        assert m["coredns_health_request_failures_total"] == 1


# -- start-up and lame duck through the Server object ------------------------------------------


async def aget(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 3)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def build(text: str) -> Server:
    return Server.from_blocks(parse_corefile(text, "Corefile"), 0, registry=CollectorRegistry(),
                              drain_timeout=2.0)


def plugin(server: Server, name: str) -> SetupPlugin:
    return next(p for p in server.sites[0].setups if p.name == name)


class Gate(SetupPlugin):
    """Holds start-up until the test opens it."""

    name = "gate"

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.open = asyncio.Event()

    async def start(self) -> None:
        self.entered.set()
        await self.open.wait()


async def test_ready_is_503_until_the_dns_listeners_are_bound() -> None:
    server = build(COREFILE)
    gate = Gate()
    server.sites[0].setups.append(gate)
    starting = asyncio.create_task(server.start())
    try:
        await asyncio.wait_for(gate.entered.wait(), 5)
        rport, hport = plugin(server, "ready").port, plugin(server, "health").port  # type: ignore[attr-defined]
        assert await aget(rport, "/ready") == (503, b"server")
        assert await aget(hport, "/health") == (200, b"OK")
        gate.open.set()
        await asyncio.wait_for(starting, 5)
        assert await aget(rport, "/ready") == (200, b"OK")
    finally:
        gate.open.set()
        await server.stop()


async def dns_answered(port: int, tcp: bool) -> int:
    q = dns.message.make_query("www.example.org.", "A")
    fn = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
    r = await fn(q, "127.0.0.1", port=port, timeout=2)
    return r.rcode()


# Long enough that the checks below finish inside it even on a loaded machine.
LAMEDUCK = COREFILE.replace("health 127.0.0.1:0", "health 127.0.0.1:0 {\nlameduck 2s\n}")


async def test_lameduck_keeps_serving_then_stops() -> None:
    server = build(LAMEDUCK)
    await server.start()
    h, r = plugin(server, "health"), plugin(server, "ready")
    hport, rport, dport = h.port, r.port, server.port()  # type: ignore[attr-defined]
    assert await aget(rport, "/ready") == (200, b"OK")
    t0 = time.monotonic()
    stopping = asyncio.create_task(server.stop())
    try:
        await asyncio.wait_for(h.in_lameduck.wait(), 5)  # type: ignore[attr-defined]
        assert await aget(hport, "/health") == (200, b"OK")
        assert await aget(rport, "/ready") == (503, b"Shutting down")
        assert await dns_answered(dport, tcp=False) == dns.rcode.SERVFAIL  # the chain answers
        assert await dns_answered(dport, tcp=True) == dns.rcode.SERVFAIL
        assert not stopping.done()
    finally:
        await asyncio.wait_for(stopping, 10)
    assert time.monotonic() - t0 >= 2.0
    with pytest.raises(OSError):
        await aget(hport, "/health")


def test_stop_ends_the_self_check_whenever_it_lands(monkeypatch: pytest.MonkeyPatch) -> None:
    # Back-to-back self-checks and a stop at a random moment, on uvloop as in production: on
    # Python 3.11 a cancel that lands as a check's request completes was swallowed by
    # asyncio.wait_for and stop() waited forever (15% of the stops here).
    monkeypatch.setattr(health, "CHECK_INTERVAL", 0.0)
    rnd = random.Random(5)

    async def cycles() -> None:
        for _ in range(60):
            server = build(".:0 {\n bind 127.0.0.1\n health 127.0.0.1:0\n}\n")
            await server.start()
            await asyncio.sleep(rnd.uniform(0.01, 0.05))
            stopping = asyncio.ensure_future(server.stop())
            done, _ = await asyncio.wait({stopping}, timeout=5)
            assert done, "stop() hung: the self-check outlived its cancel"

    loop = new_event_loop()
    try:
        loop.run_until_complete(cycles())
    finally:
        loop.close()


async def test_without_lameduck_stop_does_not_wait() -> None:
    server = build(COREFILE)
    await server.start()
    h = plugin(server, "health")
    await asyncio.wait_for(server.stop(), 5)
    assert not h.in_lameduck.is_set()  # type: ignore[attr-defined]


# -- the real daemon and SIGTERM -------------------------------------------------------------


def lines(proc: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    """The daemon's output lines as they come (a thread reads them until EOF)."""
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return q, t


def wait_line(q: queue.Queue[str], text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        line = q.get(timeout=max(0.01, deadline - time.monotonic()))
        if text in line:
            return line


def drain(q: queue.Queue[str]) -> list[str]:
    """The lines still queued, and those that follow until the output goes quiet for 1 s."""
    got = []
    with contextlib.suppress(queue.Empty):
        while True:
            got.append(q.get(timeout=1))
    return got


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str], dict[str, int]]]:
    ports = {"dns": free_port(), "health": free_port(), "ready": free_port()}
    conf = tmp_path / "Corefile"
    conf.write_text(f"""
example.org:{ports["dns"]} {{
    bind 127.0.0.1
    errors
    health 127.0.0.1:{ports["health"]} {{
        lameduck 3s
    }}
    ready 127.0.0.1:{ports["ready"]}
}}
""")
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "linkdns", "-conf",
                             str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, pump = lines(proc)
    try:
        yield proc, out, ports
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        pump.join(5)
        assert proc.stdout is not None
        proc.stdout.close()


def test_sigterm_with_lameduck_keeps_serving_then_exits(
        daemon: tuple[subprocess.Popen[str], queue.Queue[str], dict[str, int]]) -> None:
    proc, out, ports = daemon
    wait_line(out, "linkdns-")  # logged once the listeners are up
    assert http_get(ports["ready"], "/ready")[::2] == (200, b"OK")
    assert http_get(ports["health"], "/health")[::2] == (200, b"OK")
    proc.send_signal(signal.SIGTERM)
    wait_line(out, "Going into lameduck mode for 3s")
    assert http_get(ports["health"], "/health")[::2] == (200, b"OK")
    assert http_get(ports["ready"], "/ready")[::2] == (503, b"Shutting down")
    assert query(ports["dns"], "www.example.org.", "A").rcode() == dns.rcode.SERVFAIL
    try:
        rc = proc.wait(10)  # lame duck 3 s, then a prompt stop
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # -X faulthandler: every thread's stack to the output
        proc.wait(5)
        raise AssertionError("no exit 10 s after SIGTERM:\n" + "".join(drain(out))) from None
    assert rc == 0
    with pytest.raises(OSError):
        http_get(ports["health"], "/health", timeout=1)
