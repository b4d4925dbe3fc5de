"""A linkdns daemon in a subprocess (``python -m linkdns``) for tests that watch the process
from outside: its RSS, whether it is still alive after hostile input."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dns.exception
from harness import free_port, query


class Daemon:
    """``with Daemon(tmp_path, body) as d: d.port, d.rss_kib()``; ``body`` is the server
    block's inside (``{port}`` and ``{mport}`` filled in)."""

    def __init__(self, tmp: Path, body: str, *args: str) -> None:
        self.port = free_port()
        self.mport = free_port()
        self.conf = tmp / "Corefile"
        self.conf.write_text(f".:{self.port} {{\n    bind 127.0.0.1\n"
                             f"    prometheus 127.0.0.1:{self.mport}\n{body}\n}}\n")
        self.log = tmp / "linkdns.log"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Daemon:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "linkdns", "-conf", str(self.conf), *self.args],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.mport}/metrics", timeout=1)
                # class CH: answered REFUSED by linkdns itself, whatever the upstream does
                query(self.port, "ready.probe.", timeout=1, rdclass="CH")
                return self
            except (OSError, dns.exception.Timeout):
                time.sleep(0.1)
        raise TimeoutError(f"linkdns did not start:\n{self.output()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def status_kib(self, field: str) -> int:
        """A ``/proc/PID/status`` field in KiB (VmRSS, VmHWM)."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
        assert m is not None
        return int(m.group(1))

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.mport}/metrics", timeout=5) as r:
            body: bytes = r.read()
        return body.decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total
