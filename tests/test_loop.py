"""loop: a Corefile that forwards to itself is detected and the daemon exits 1."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import dns.rcode
import pytest
from fakeupstream import FakeUpstream
from harness import Running, free_port

from linkdns.config import build_sites
from linkdns.corefile import parse_corefile
from linkdns.errors import ConfigError


def test_forwarding_to_itself_is_detected_and_the_daemon_exits_1(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "Corefile"
    conf.write_text(f".:{port} {{\n  bind 127.0.0.1\n  loop\n  forward . 127.0.0.1:{port}\n}}\n")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "linkdns", "-conf", str(conf)],
                       capture_output=True, text=True, timeout=40)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "[FATAL] plugin/loop: Loop (127.0.0.1:" in r.stdout
    assert 'detected for zone ".", see https://coredns.io/plugins/loop#troubleshooting.' in r.stdout
    assert time.monotonic() - t0 < 20


def test_no_loop_probe_is_answered_and_the_plugin_steps_aside() -> None:
    with FakeUpstream() as up, Running(
            f".:0 {{\n bind 127.0.0.1\n loop\n forward . {up.addr}\n}}\n") as srv:
        lp = next(h for h in srv.server.sites[0].handlers if h.name == "loop")
        deadline = time.monotonic() + 5
        while not lp.disabled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lp.disabled and lp.seen == 1
        assert not srv.server.failed.is_set()
        assert srv.query("a.example.", "A").rcode() == dns.rcode.NOERROR
        probes = [q for q in up.queries if q.qtype == "HINFO"]
        assert len(probes) == 1 and probes[0].qname == lp.qname


def test_loop_takes_no_arguments() -> None:
    with pytest.raises(ConfigError, match="Corefile:3 - plugin/loop: Wrong argument count"):
        build_sites(parse_corefile(".:53 {\n forward . 127.0.0.1\n loop 1\n}\n"))
