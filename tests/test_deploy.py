"""The shipped configs parse and set up: Corefile.example and the DaemonSet's ConfigMap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from linkdns.config import build_sites
from linkdns.corefile import parse_corefile

ROOT = Path(__file__).resolve().parent.parent


def test_corefile_example_validates() -> None:
    r = subprocess.run([sys.executable, "-m", "linkdns", "-conf", str(ROOT / "Corefile.example"),
                        "-validate"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_daemonset_configmap_corefile_sets_up_four_blocks() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "nodelocaldns.yaml").read_text()))
    cm = next(d for d in docs if d and d.get("kind") == "ConfigMap")
    sites = build_sites(parse_corefile(cm["data"]["Corefile"], "ConfigMap/node-local-dns"))
    assert [s.zones for s in sites] == [["cluster.local."], ["in-addr.arpa."], ["ip6.arpa."],
                                        ["."]]
    assert all({"cache", "forward", "reload", "loop", "errors"} <= s.plugins.keys()
               for s in sites)
    ds = next(d for d in docs if d and d.get("kind") == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["containers"][0]["args"] == ["-conf", "/etc/coredns/Corefile"]
