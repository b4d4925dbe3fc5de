"""node-cache's metrics endpoint: coredns_nodecache_setup_errors_total{errortype}, pre-set to 0,
counted where node-cache counts; scraped over HTTP (loopback, and in a network namespace)."""

from __future__ import annotations

import logging
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest
from fakeupstream import FakeUpstream
from harness import free_port
from netns import ENV, LOCAL, Daemon, ask, config, in_ns, needed, ns, upstream
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from linkdns.cli import make_parser
from linkdns.nodelocal import NodeLocal, Params
from linkdns.nodelocal.metrics import ERRORTYPES, MetricsEndpoint, SetupErrors
from linkdns.nodelocal.netif import Interface
from linkdns.nodelocal.rules import IPTables

__all__ = ["ns", "upstream"]  # fixtures

NAME = "coredns_nodecache_setup_errors_total"


def counts(text: str) -> dict[str, float]:
    """errortype -> value of the setup error counter in an exposition."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == NAME:
                assert s.labels["errortype"] not in out, "counter exposed twice"
                out[s.labels["errortype"]] = s.value
    return out


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        body: bytes = r.read()
    return body.decode()


def test_endpoint_serves_every_errortype_at_zero() -> None:
    reg = CollectorRegistry()
    reg.register(SetupErrors())
    port = free_port()
    ep = MetricsEndpoint(f"127.0.0.1:{port}", reg)
    assert ep.start()
    try:
        text = get(f"http://127.0.0.1:{port}/metrics")
        assert "# TYPE coredns_nodecache_setup_errors_total counter" in text
        assert counts(text) == dict.fromkeys(ERRORTYPES, 0.0)
        with pytest.raises(urllib.error.HTTPError) as e:
            get(f"http://127.0.0.1:{port}/")
        assert e.value.code == 404
        e.value.close()
        twin = MetricsEndpoint(f"127.0.0.1:{port}", reg)  # an overlapping successor's
        assert twin.start()
        twin.close()
    finally:
        ep.close()


def test_endpoint_that_cannot_listen_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    ep = MetricsEndpoint("127.0.0.1:notaport", CollectorRegistry())
    with caplog.at_level(logging.ERROR, "linkdns.nodelocal"):
        assert ep.start() is False
    assert "Failed to start metrics handler: bad address '127.0.0.1:notaport'" in caplog.text


class Script:
    """A command runner answering by argv prefix (first match wins); others succeed."""

    def __init__(self, answers: list[tuple[tuple[str, ...], int, str]]) -> None:
        self.answers = answers

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        for prefix, rc, err in self.answers:
            if tuple(argv[: len(prefix)]) == prefix:
                return subprocess.CompletedProcess(list(argv), rc, "", err)
        return subprocess.CompletedProcess(list(argv), 0, "", "")


def node(tmp_path: Path, *argv: str) -> NodeLocal:
    args = make_parser().parse_args(["-localip", LOCAL, "-conf", str(tmp_path / "Corefile"),
                                     "-basecorefile", str(tmp_path / "Corefile.base"),
                                     "-kubednscm", str(tmp_path / "cm"),
                                     "-lockfile", str(tmp_path / "node.lock"), *argv])
    return NodeLocal(Params.from_args(args), {"KUBE_DNS_SERVICE_HOST": "10.96.0.11"})


LOCKED = "Another app is currently holding the xtables lock. Stopped waiting after 5s."
GONE = 'Device "nodelocaldns" does not exist.'


@pytest.mark.parametrize(
    ("answers", "want"),
    [
        pytest.param([(("iptables", "-w", "5", "-t", "raw", "-C"), 4, LOCKED)],
                     {"iptables_lock": 8}, id="xtables-lock"),
        pytest.param([(("iptables", "-w", "5", "-t", "filter", "-C"), 4, "Permission denied")],
                     {"iptables": 4}, id="iptables"),
        pytest.param([(("ip", "link", "show"), 1, GONE),
                      (("ip", "link", "add"), 2, "RTNETLINK answers: Operation not permitted")],
                     {"interface_add": 1, "interface_check": 1}, id="interface-add"),
        pytest.param([(("ip", "-o", "addr"), 1, "Cannot send dump request")],
                     {"interface_check": 1}, id="interface-check"),
    ],
)
def test_periodic_sync_counts_like_node_cache(tmp_path: Path, answers: list[tuple[
        tuple[str, ...], int, str]], want: dict[str, int]) -> None:
    """setupNetworking: one count per rule that fails (raw: 8 rules, filter: 4), an interface
    that cannot be added counts as interface_add and interface_check."""
    n = node(tmp_path)
    n.iptables = IPTables(False, Script(answers))
    n.iface = Interface("nodelocaldns", [LOCAL], False, Script(answers))
    n._served = True
    n.sync_networking()
    assert {t: n.errors.get(t) for t in ERRORTYPES} == {t: want.get(t, 0) for t in ERRORTYPES}


def test_configmap_errors_are_counted(tmp_path: Path) -> None:
    n = node(tmp_path)
    assert n.write_corefile() is False  # no base Corefile
    (tmp_path / "Corefile.base").write_text(".:53 {\n    forward . /etc/resolv.conf\n}\n")
    (tmp_path / "cm").mkdir()
    (tmp_path / "cm" / "stubDomains").write_text('{"not a domain!": ["10.0.0.1"]}')
    assert n.write_corefile() is True  # written, the invalid ConfigMap ignored
    assert n.errors.get("configmap") == 2


@needed
@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers-2"])
def test_scraped_in_node_local_mode(ns: str, upstream: FakeUpstream, tmp_path: Path,
                                    workers: int) -> None:
    """The endpoint on -metrics-listen-address, and the same counter once on the prometheus
    plugin's port (with -workers: the parent's count, read by the worker that answers)."""
    args = config(tmp_path, upstream, extra="    prometheus 127.0.0.1:9253\n")
    (tmp_path / "kube-dns" / "stubDomains").write_text('{"not a domain!": ["10.0.0.1"]}')
    d = Daemon(ns, "-localip", LOCAL, "-metrics-listen-address", "127.0.0.1:19353",
               "-workers", str(workers), *args, env=ENV)
    try:
        d.wait_for("Node setup done")
        ask(ns, LOCAL, "example.org.")
        want = {**dict.fromkeys(ERRORTYPES, 0.0), "configmap": 1.0}
        assert counts(in_ns(ns, lambda: get("http://127.0.0.1:19353/metrics"))) == want
        for _ in range(4):  # with workers, whichever answers
            assert counts(in_ns(ns, lambda: get("http://127.0.0.1:9253/metrics"))) == want
    finally:
        assert d.stop() == 0, d.out
