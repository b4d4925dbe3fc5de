"""What a running linkdns exports, and what a PromQL expression asks for.

:func:`scrape` starts the real daemon (``python -m linkdns``, in node-local mode without the
privileged set-up) on 127.0.0.1 in front of a FakeUpstream, sends it real traffic (misses,
hits, NXDOMAIN, SERVFAIL, TCP, an upstream that is down so its health checks fail) and reads
both ``/metrics`` endpoints: the sample names they export, each with its label names.
:func:`selectors` pulls the metric names and the label names out of a PromQL expression (the
dashboard's panels, the alert rules), so the tests can check one against the other.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.rcode
from fakeupstream import FakeUpstream, nxdomain, servfail
from harness import free_port, http_get, query
from prometheus_client.parser import text_string_to_metric_families

# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS = frozenset({"instance", "job"})


def _handler(q: dns.message.Message, proto: str) -> dns.message.Message | None:
    name = q.question[0].name.to_text()
    if name.startswith("nx."):
        return nxdomain(q)
    if name.startswith("fail."):
        return servfail(q)
    return None  # A 192.0.2.1


@functools.cache
def scrape() -> dict[str, frozenset[str]]:
    """{sample name: label names} from a linkdns that served real traffic (run once).

    It runs in node-local mode as the DaemonSet runs it (Corefile rendered from a base, the
    local IP in `bind`), with the interface and iptables set-up off so it needs no privileges,
    and both endpoints are read: the prometheus plugin's and node-cache's own."""
    port, metrics, ready, dead, nodecache = (free_port() for _ in range(5))
    with FakeUpstream(handler=_handler) as up, tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "Corefile.base"
        base.write_text(f"""
.:{port} {{
    bind __PILLAR__LOCAL__DNS__
    errors
    cache 30
    forward . {up.addr}
    prometheus 127.0.0.1:{metrics}
    ready 127.0.0.1:{ready}
}}
down.test:{port} {{
    bind __PILLAR__LOCAL__DNS__
    cache 30
    forward . 127.0.0.1:{dead} {{
        health_check 0.1s
    }}
    prometheus 127.0.0.1:{metrics}
}}
""")
        proc = subprocess.Popen(
            [sys.executable, "-m", "linkdns", "-localip", "127.0.0.1", "-setupinterface=false",
             "-setupiptables=false", "-basecorefile", str(base), "-conf",
             str(Path(tmp) / "Corefile"), "-kubednscm", str(Path(tmp) / "no-kube-dns"),
             "-metrics-listen-address", f"127.0.0.1:{nodecache}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            _wait_ready(ready, proc)
            _traffic(port)
            text = _wait_for(metrics, "coredns_proxy_healthcheck_failures_total{")
            text += _wait_for(nodecache, "coredns_nodecache_setup_errors_total{")
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in exported.items()}


def _wait_ready(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            if http_get(port, "/ready", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("linkdns did not get ready in 15 s")


def _traffic(port: int) -> None:
    rcodes = {}
    for name in ("a.example.", "a.example.", "nx.example.", "nx.example.", "fail.example.",
                 "x.down.test."):
        rcodes[name] = query(port, name, timeout=6).rcode()
    assert query(port, "b.example.", "AAAA", tcp=True).rcode() == dns.rcode.NOERROR
    assert rcodes == {"a.example.": dns.rcode.NOERROR, "nx.example.": dns.rcode.NXDOMAIN,
                      "fail.example.": dns.rcode.SERVFAIL, "x.down.test.": dns.rcode.SERVFAIL}


def _wait_for(port: int, needle: str) -> str:
    """/metrics once it contains ``needle`` (health checks of the dead upstream are async)."""
    deadline = time.monotonic() + 10
    while True:
        status, _, body = http_get(port, "/metrics")
        assert status == 200
        text = body.decode()
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


# --- PromQL -------------------------------------------------------------------------------

_KEYWORDS = frozenset([
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
    "count_values", "bottomk", "topk", "quantile", "inf", "nan"])
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def selectors(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """({metric: label names its selector matches on}, label names used in grouping)."""
    metrics: dict[str, set[str]] = {}
    grouping: set[str] = set()
    # label matchers first, while the strings in them are still there
    for m in _SELECTOR.finditer(expr):
        if m.group(1) and m.group(1) not in _KEYWORDS:
            body = _STRING.sub('""', m.group(2))
            metrics.setdefault(m.group(1), set()).update(
                re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", body))
    rest = _SELECTOR.sub(lambda m: m.group(1) or "", _STRING.sub('""', expr))
    rest = _RANGE.sub("", rest)
    for m in _GROUPING.finditer(rest):
        grouping.update(x.strip() for x in m.group(2).split(",") if x.strip())
    rest = _GROUPING.sub(" ", rest)
    rest = re.sub(r"\$\{?\w+\}?", " ", rest)  # Grafana variables
    for m in _IDENT.finditer(rest):
        word = m.group(0)
        after = rest[m.end():].lstrip()
        if word in _KEYWORDS or after.startswith("("):
            continue  # a function, an aggregation or a keyword
        if re.fullmatch(r"\d.*|e\d+", word) or rest[max(0, m.start() - 1)].isdigit():
            continue  # a number, a duration
        metrics.setdefault(word, set())
    return metrics, grouping


def missing(expr: str, exported: dict[str, frozenset[str]],
            external: frozenset[str] = frozenset()) -> list[str]:
    """What ``expr`` asks for that linkdns does not export (metrics in ``external`` come
    from elsewhere, e.g. kube-state-metrics, and are not checked)."""
    metrics, grouping = selectors(expr)
    problems = []
    used_labels: set[str] = set()
    for name, labels in metrics.items():
        if name in external:
            continue
        if name not in exported:
            problems.append(f"metric {name}")
            continue
        used_labels |= exported[name]
        problems += [f"label {name}{{{lb}}}" for lb in sorted(labels - exported[name]
                                                            - TARGET_LABELS)]
    ours = [n for n in metrics if n not in external]
    if ours:
        problems += [f"grouping label {lb}" for lb in sorted(grouping - used_labels
                                                            - TARGET_LABELS)]
    return problems
