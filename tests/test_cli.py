"""The daemon as a user runs it: flags, -validate, signals, pidfile, CoreDNS-style logs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import dns.rcode
import pytest
from harness import free_port, query

PY = sys.executable


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "linkdns", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_version() -> None:
    r = run("-version")
    assert r.returncode == 0
    assert r.stdout.startswith("linkdns-")


@pytest.mark.parametrize(
    ("corefile", "expected"),
    [
        pytest.param(".:1053 {\n    errors\n    nosuch\n}\n", "Corefile:3 - Unknown directive 'nosuch'",
                     id="unknown-directive"),
        pytest.param(".:1053 {\n  errors\n  errors\n}\n", "Corefile:3 - plugin/errors:",
                     id="plugin-twice"),
        pytest.param("example.org:53 {\n errors\n}\nExample.org:53 {\n errors\n}\n",
                     "cannot serve dns://example.org.:53 - it is already defined",
                     id="zone-twice"),
        pytest.param(".:1053 {\n  errors\n", "Corefile:1 - Unexpected EOF", id="unclosed-brace"),
        pytest.param(".:1053 {\n  bind nosuchiface0\n}\n", "Corefile:2 - plugin/bind:",
                     id="bad-bind"),
        pytest.param(".:1053 {\n  log {\n    class bogus\n  }\n}\n",
                     "Corefile:3 - plugin/log: unknown class", id="log-bad-class"),
        pytest.param(".:1053 {\n  errors extra\n}\n",
                     "Corefile:2 - plugin/errors: Wrong argument count", id="errors-args"),
    ],
)
def test_validate_reports_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corefile: str, expected: str
) -> None:
    conf = tmp_path / "Corefile"
    conf.write_text(corefile)
    monkeypatch.chdir(tmp_path)
    r = run("-conf", "Corefile", "-validate")
    assert r.returncode == 1, r.stdout + r.stderr
    assert expected in r.stderr


def test_validate_reports_every_error(tmp_path: Path) -> None:
    conf = tmp_path / "Corefile"
    conf.write_text(".:1053 {\n  nosuch\n  other\n}\n")
    r = run("-conf", str(conf), "-validate")
    assert r.returncode == 1
    assert "Corefile:2 - Unknown directive 'nosuch'" in r.stderr
    assert "Corefile:3 - Unknown directive 'other'" in r.stderr


def test_validate_ok_binds_nothing(tmp_path: Path) -> None:
    conf = tmp_path / "Corefile"
    conf.write_text(".:53 {\n  errors\n  log\n}\n")  # port 53 would need root to bind
    r = run("-conf", str(conf), "-validate")
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


def test_missing_corefile_is_an_error(tmp_path: Path) -> None:
    r = run("-conf", str(tmp_path / "nope"), "-validate")
    assert r.returncode == 1


def test_daemon_serves_logs_and_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "Corefile"
    conf.write_text(f".:{port} {{\n  bind 127.0.0.1\n  log\n}}\n")
    pidfile = tmp_path / "linkdns.pid"
    p = subprocess.Popen([PY, "-m", "linkdns", "-conf", str(conf), "-pidfile", str(pidfile)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10
        r = None
        while time.monotonic() < deadline:
            try:
                r = query(port, "example.org.", "A", timeout=0.3)
                break
            except Exception:
                time.sleep(0.05)
        assert r is not None and r.rcode() == dns.rcode.SERVFAIL
        assert pidfile.read_text().strip() == str(p.pid)
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0
    assert "[INFO] linkdns-" in out
    # the log plugin's CoreDNS common log format line
    line = next(x for x in out.splitlines() if '"A IN example.org. udp' in x)
    assert line.startswith("[INFO] 127.0.0.1:")
    assert " SERVFAIL qr,rd,ra " in line
    assert line.endswith("s")
    assert not pidfile.exists()


def test_sigint_also_stops(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "Corefile"
    conf.write_text(f".:{port} {{\n  bind 127.0.0.1\n  errors\n}}\n")
    p = subprocess.Popen([PY, "-m", "linkdns", "-conf", str(conf)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    answered = False
    out = ""
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and p.poll() is None:
            try:
                query(port, "example.org.", "A", timeout=0.3)
                answered = True
                break
            except Exception:
                time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert answered, out
    assert p.returncode == 0, out
    assert "shutting down" in out
