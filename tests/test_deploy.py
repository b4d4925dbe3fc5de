"""The shipped configs parse and set up: Corefile.example and the DaemonSet's ConfigMap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from linkdns import nodelocal
from linkdns.cli import make_parser
from linkdns.config import build_sites
from linkdns.corefile import parse_corefile
from linkdns.nodelocal import template

ROOT = Path(__file__).resolve().parent.parent


def test_corefile_example_validates() -> None:
    r = subprocess.run([sys.executable, "-m", "linkdns", "-conf", str(ROOT / "Corefile.example"),
                        "-validate"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_daemonset_runs_node_cache_args_and_its_corefile_sets_up_four_blocks() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "nodelocaldns.yaml").read_text()))
    ds = next(d for d in docs if d and d.get("kind") == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    container = spec["containers"][0]
    # node-cache's own command line, as in the upstream manifest
    args = make_parser().parse_args(container["args"])
    assert args.localip is not None  # node-local mode
    p = nodelocal.Params.from_args(args)
    assert p.local_ips == ("169.254.20.10", "10.96.0.10")
    assert (p.corefile, p.base_corefile, p.upstream_svc) == (
        "/etc/Corefile", "/etc/coredns/Corefile.base", "kube-dns-upstream")
    assert p.setup_interface and p.setup_iptables and not p.skip_teardown
    assert "NET_ADMIN" in container["securityContext"]["capabilities"]["add"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/run/xtables.lock"] == "xtables-lock" and "/etc/kube-dns" in mounts
    volume = next(v for v in spec["volumes"] if v["name"] == mounts["/etc/coredns"])
    assert volume["configMap"]["items"] == [{"key": "Corefile", "path": "Corefile.base"}]
    # the ConfigMap's Corefile is the base node-cache renders; rendered, it sets up
    cm = next(d for d in docs if d and d.get("kind") == "ConfigMap")
    base = cm["data"]["Corefile"]
    assert template.CLUSTER_DNS in base and template.UPSTREAM_SERVERS in base
    text, warnings = template.render(base, template.KubeDNSConfig(), p.local_ips, 53,
                                     "10.96.0.11")
    assert not warnings and "__PILLAR__" not in text
    sites = build_sites(parse_corefile(text, "/etc/Corefile"))
    assert [s.zones for s in sites] == [["cluster.local."], ["in-addr.arpa."], ["ip6.arpa."],
                                        ["."]]
    assert all({"cache", "forward", "reload", "loop", "errors"} <= s.plugins.keys()
               for s in sites)
    assert "forward . 10.96.0.11 {" in text and "forward . /etc/resolv.conf" in text
