"""Writes prometheusrule.yaml (a Prometheus Operator PrometheusRule) from linkdns-rules.yaml.

linkdns-rules.yaml is the one source of the alerts; run ``python prometheusrule.py`` after
editing it (tests/test_alerts.py fails while the two differ). ``--stdout`` prints instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "linkdns-rules.yaml"
TARGET = HERE / "prometheusrule.yaml"
HEADER = """\
# Generated from linkdns-rules.yaml by prometheusrule.py: edit that file, then run
# `python deploy/prometheus/prometheusrule.py`. For the Prometheus Operator: its Prometheus
# picks this up if its ruleSelector / ruleNamespaceSelector match (add the labels it selects).
"""


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (the PromQL), as in the source file."""


def _str(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
    if "\n" in s:
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", s)


_Dumper.add_representer(str, _str)


def render() -> str:
    rules: dict[str, Any] = yaml.safe_load(SOURCE.read_text())
    cr = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "linkdns", "namespace": "kube-system",
                     "labels": {"app.kubernetes.io/name": "linkdns"}},
        "spec": {"groups": rules["groups"]},
    }
    return HEADER + yaml.dump(cr, Dumper=_Dumper, sort_keys=False, width=100,
                              allow_unicode=True)


def main() -> None:
    text = render()
    if "--stdout" in sys.argv[1:]:
        sys.stdout.write(text)
    else:
        TARGET.write_text(text)


if __name__ == "__main__":
    main()
