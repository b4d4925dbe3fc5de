"""deploy/prometheus: the alert rules pass `promtool check rules` and their unit tests
(`promtool test rules`), the PrometheusRule is generated from them, and every linkdns metric
and label they use is one a running linkdns exports after real traffic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from exported import missing, scrape
from toolpath import tool

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "linkdns-rules.yaml"
# From kube-state-metrics and Prometheus itself, not from linkdns.
EXTERNAL = frozenset({"up", "kube_pod_status_ready", "kube_pod_info",
                      "kube_daemonset_status_desired_number_scheduled",
                      "kube_daemonset_status_number_available"})


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True,
                          timeout=120, cwd=PROM)


def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", RULES.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout


def test_promtool_unit_tests_pass_and_cover_every_alert() -> None:
    r = promtool("test", "rules", "linkdns-rules.test.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    tests = yaml.safe_load((PROM / "linkdns-rules.test.yaml").read_text())["tests"]
    firing = {case["alertname"] for t in tests for case in t["alert_rule_test"]
              if case.get("exp_alerts")}
    assert firing == {r["alert"] for r in rules()}


def test_a_failing_expectation_fails_promtool(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests against rules with a higher threshold."""
    text = RULES.read_text().replace("> 0.05", "> 0.5")
    assert text != RULES.read_text()
    (tmp_path / RULES.name).write_text(text)
    (tmp_path / "t.yaml").write_text((PROM / "linkdns-rules.test.yaml").read_text())
    r = subprocess.run([tool("promtool"), "test", "rules", "t.yaml"], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode != 0 and "LinkdnsServfailRatioHigh" in r.stdout + r.stderr


def test_prometheusrule_is_generated_from_the_rule_file() -> None:
    r = subprocess.run([sys.executable, str(PROM / "prometheusrule.py"), "--stdout"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    committed = (PROM / "prometheusrule.yaml").read_text()
    assert r.stdout == committed, "run python deploy/prometheus/prometheusrule.py"
    cr = yaml.safe_load(committed)
    assert (cr["apiVersion"], cr["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert cr["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_every_alert_has_severity_and_summary() -> None:
    for rule in rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_every_linkdns_metric_and_label_used_is_exported(rule: dict[str, Any]) -> None:
    assert missing(rule["expr"], scrape(), EXTERNAL) == []
