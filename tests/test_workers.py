"""-workers N: processes share the DNS and metrics ports; /metrics is the sum of all workers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import dns.rcode
from harness import free_port, http_get, query
from prometheus_client.parser import text_string_to_metric_families

from linkdns import workers


def total_requests(body: str) -> float:
    n = 0.0
    for fam in text_string_to_metric_families(body):
        if fam.name == "coredns_dns_requests":
            n += sum(s.value for s in fam.samples if s.labels.get("zone") == ".")
    return n


def test_two_workers_answer_and_metrics_are_summed(tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    conf = tmp_path / "Corefile"
    conf.write_text(f".:{port} {{\n  bind 127.0.0.1\n  errors\n"
                    f"  prometheus 127.0.0.1:{mport}\n}}\n")
    p = subprocess.Popen([sys.executable, "-m", "linkdns", "-conf", str(conf), "-workers", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # both workers up: each logs its version line
            try:
                status, _, body = http_get(mport, "/metrics", timeout=0.5)
                if status == 200 and b"coredns_build_info" in body:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        sent = 60
        for i in range(sent):  # new source port per query: the kernel spreads them
            assert query(port, f"n{i}.example.", "A", timeout=2).rcode() == dns.rcode.SERVFAIL
        seen = set()
        for _ in range(10):  # whichever worker answers the scrape, it reports the sum
            status, _, body = http_get(mport, "/metrics", timeout=3)
            assert status == 200
            seen.add(total_requests(body.decode()))
        assert seen == {float(sent)}
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.communicate(timeout=15)
        finally:
            if p.poll() is None:
                p.kill()
    assert p.returncode == 0


def test_merge_sums_counters_and_keeps_identity_gauges() -> None:
    a = (b'# HELP coredns_panics_total x\n# TYPE coredns_panics_total counter\n'
         b'coredns_panics_total 2.0\n'
         b'# HELP coredns_build_info b\n# TYPE coredns_build_info gauge\n'
         b'coredns_build_info{version="1"} 1.0\n')
    b = a.replace(b"total 2.0", b"total 3.0")
    fams = {f.name: f for f in text_string_to_metric_families(workers.merge([a, b]).decode())}
    assert fams["coredns_panics"].samples[0].value == 5.0
    assert fams["coredns_build_info"].samples[0].value == 1.0
