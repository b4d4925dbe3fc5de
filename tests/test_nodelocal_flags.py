"""Node-local mode's flags: node-cache's names, defaults and Go syntax, on linkdns's parser."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from linkdns import nodelocal
from linkdns.cli import main, make_parser
from linkdns.nodelocal.flags import Params


def parse(*argv: str) -> argparse.Namespace:
    return make_parser().parse_args(list(argv))


def test_without_localip_node_local_mode_is_off() -> None:
    args = parse("-conf", "Corefile")
    assert args.localip is None
    assert nodelocal.from_args(args) is None


def test_node_cache_defaults() -> None:
    p = Params.from_args(parse("-localip", "169.254.20.10"))
    assert p.local_ips == ("169.254.20.10",)
    assert p.local_port == 53
    assert p.interface == "nodelocaldns"
    assert p.setup_interface is True
    assert p.setup_iptables is True
    assert p.skip_teardown is False
    assert p.sync_interval == 60.0
    assert p.base_corefile == "/etc/coredns/Corefile.base"
    assert p.corefile == "Corefile"  # -conf's default, which node-cache uses too
    assert p.upstream_svc == "kube-dns"
    assert p.health_port == 8080
    assert p.ipv6 is False


def test_stock_manifest_args() -> None:
    p = Params.from_args(parse("-localip", "169.254.20.10,10.96.0.10", "-conf", "/etc/Corefile",
                               "-upstreamsvc", "kube-dns-upstream", "-pidfile",
                               "/tmp/node-cache.pid"))
    assert p.local_ips == ("169.254.20.10", "10.96.0.10")
    assert p.local_ip_str == "169.254.20.10 10.96.0.10"
    assert p.corefile == "/etc/Corefile"
    assert p.upstream_svc == "kube-dns-upstream"
    assert p.pidfile == "/tmp/node-cache.pid"


@pytest.mark.parametrize(
    ("argv", "field", "want"),
    [
        pytest.param(["-setupiptables=false"], "setup_iptables", False, id="eq-false"),
        pytest.param(["-setupiptables=0"], "setup_iptables", False, id="eq-0"),
        pytest.param(["-setupinterface=F"], "setup_interface", False, id="eq-F"),
        pytest.param(["-skipteardown"], "skip_teardown", True, id="bare-true"),
        pytest.param(["-skipteardown=true"], "skip_teardown", True, id="eq-true"),
        pytest.param(["-skipteardown=TRUE"], "skip_teardown", True, id="eq-TRUE"),
        pytest.param(["-syncinterval", "1m"], "sync_interval", 60.0, id="duration-1m"),
        pytest.param(["-syncinterval=500ms"], "sync_interval", 0.5, id="duration-ms"),
        pytest.param(["-syncinterval", "30"], "sync_interval", 30.0, id="duration-bare-seconds"),
        pytest.param(["-interfacename", "nld0"], "interface", "nld0", id="interfacename"),
        pytest.param(["-health-port", "9090"], "health_port", 9090, id="health-port"),
        pytest.param(["-dns.port", "1053"], "local_port", 1053, id="dns-port"),
        pytest.param(["-basecorefile=/x/base"], "base_corefile", "/x/base", id="basecorefile"),
        pytest.param(["-kubednscm", "/x/cm"], "kubedns_cm", "/x/cm", id="kubednscm"),
        pytest.param(["-setupebtables"], "setup_ebtables", True, id="setupebtables"),
        pytest.param([], "setup_ebtables", False, id="setupebtables-default"),
        pytest.param([], "metrics_address", "0.0.0.0:9353", id="metrics-default"),
        pytest.param(["-metrics-listen-address", "127.0.0.1:19353"], "metrics_address",
                     "127.0.0.1:19353", id="metrics-listen-address"),
        pytest.param(["-lockfile", "/x/l.lock"], "lockfile", "/x/l.lock", id="lockfile"),
    ],
)
def test_flag_values(argv: list[str], field: str, want: object) -> None:
    p = Params.from_args(parse("-localip", "169.254.20.10", *argv))
    assert getattr(p, field) == want


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["-localip", "169.254.20.10,nope"], "invalid localip specified - 'nope'",
                     id="bad-ip"),
        pytest.param(["-localip", "169.254.20.10,"], "invalid localip specified - ''",
                     id="trailing-comma"),
        pytest.param(["-localip", "169.254.20.10,fd00::10"], "unexpected IP Family",
                     id="mixed-family"),
        pytest.param(["-localip", "169.254.20.10", "-health-port", "x"],
                     "invalid healthcheck port specified", id="bad-health-port"),
    ],
)
def test_rejected_like_node_cache(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Params.from_args(parse(*argv))


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["-setupiptables=maybe"], id="bad-bool"),
        pytest.param(["-syncinterval", "0s"], id="zero-interval"),
        pytest.param(["-syncinterval", "soon"], id="bad-interval"),
    ],
)
def test_bad_values_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse("-localip", "169.254.20.10", *argv)
    assert e.value.code == 2


def test_default_lockfile_is_per_interface_and_network_namespace() -> None:
    p = Params.from_args(parse("-localip", "169.254.20.10", "-interfacename", "nld0"))
    netns = os.stat("/proc/self/ns/net").st_ino
    assert p.lockfile == f"/run/linkdns/nodelocal-nld0-{netns}.lock"


def test_ipv6_local_ips() -> None:
    p = Params.from_args(parse("-localip", "fd00::10"))
    assert p.ipv6 is True


def test_existing_flags_unchanged() -> None:
    args = parse("-conf", "x", "-dns.port", "1053", "-pidfile", "p", "-quiet", "-workers", "2",
                 "-drain", "1.5")
    assert (args.conf, args.dns_port, args.pidfile, args.quiet, args.workers, args.drain) == (
        "x", 1053, "p", True, 2, 1.5)


def test_bad_localip_exits_1_with_node_cache_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc = main(["-localip", "bogus", "-conf", str(tmp_path / "Corefile")])
    assert rc == 1
    assert "Error parsing flags - invalid localip specified - 'bogus', Exiting" in (
        capsys.readouterr().out)
    assert not (tmp_path / "Corefile").exists()


def test_validate_renders_then_validates_without_touching_the_network(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = tmp_path / "Corefile.base"
    base.write_text(".:53 {\n    bind __PILLAR__LOCAL__DNS__\n"
                    "    forward . __PILLAR__UPSTREAM__SERVERS__\n}\n")
    conf = tmp_path / "Corefile"
    rc = main(["-localip", "169.254.20.10", "-conf", str(conf), "-basecorefile", str(base),
               "-kubednscm", str(tmp_path / "none"), "-validate"])
    assert rc == 0, capsys.readouterr()
    assert conf.read_text() == ".:53 {\n    bind 169.254.20.10\n    forward . /etc/resolv.conf\n}\n"
