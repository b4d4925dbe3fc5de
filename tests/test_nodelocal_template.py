"""Corefile templating as node-cache's configmap.go does it, and the re-render on changes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from linkdns.config import build_sites
from linkdns.corefile import parse_corefile
from linkdns.nodelocal.app import NodeLocal
from linkdns.nodelocal.flags import Params
from linkdns.nodelocal.template import (
    KubeDNSConfig,
    cluster_dns_ip,
    parse_kubedns,
    read_config_dir,
    render,
    service_env,
)

# The stock NodeLocal DNSCache ConfigMap (kubernetes cluster/addons/dns/nodelocaldns) after the
# install instructions' sed (iptables mode: DNS_DOMAIN, LOCAL_DNS and DNS_SERVER filled in).
STOCK = """cluster.local:53 {
    errors
    cache {
            success 9984 30
            denial 9984 5
    }
    reload
    loop
    bind 169.254.20.10 10.96.0.10
    forward . __PILLAR__CLUSTER__DNS__ {
            force_tcp
    }
    prometheus :9253
    health 169.254.20.10:8080
    }
.:53 {
    errors
    cache 30
    reload
    loop
    bind 169.254.20.10 10.96.0.10
    forward . __PILLAR__UPSTREAM__SERVERS__
    prometheus :9253
    }
"""
IPS = ("169.254.20.10", "10.96.0.10")


def test_service_env_name() -> None:
    assert service_env("kube-dns-upstream") == "KUBE_DNS_UPSTREAM_SERVICE_HOST"
    assert service_env("kube-dns") == "KUBE_DNS_SERVICE_HOST"


@pytest.mark.parametrize(
    ("env", "want"),
    [
        pytest.param({"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.11"}, "10.96.0.11", id="set"),
        pytest.param({"KUBE_DNS_UPSTREAM_SERVICE_HOST": "fd00:0::a"}, "fd00::a", id="v6-normal"),
        pytest.param({}, None, id="unset"),
        pytest.param({"KUBE_DNS_UPSTREAM_SERVICE_HOST": "kube-dns"}, None, id="not-an-ip"),
    ],
)
def test_cluster_dns_ip(env: dict[str, str], want: str | None) -> None:
    assert cluster_dns_ip("kube-dns-upstream", env) == want


def test_stock_corefile_defaults_to_resolv_conf() -> None:
    out, warnings = render(STOCK, KubeDNSConfig(), IPS, 53, "10.96.0.11")
    assert warnings == []
    assert "forward . 10.96.0.11 {\n            force_tcp" in out
    assert "forward . /etc/resolv.conf\n" in out
    assert "__PILLAR__" not in out
    sites = build_sites(parse_corefile(out, "Corefile"))
    assert [s.zones for s in sites] == [["cluster.local."], ["."]]


def test_local_dns_and_dns_server_placeholders() -> None:
    base = ".:53 {\n    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__\n}\n"
    out, _ = render(base, KubeDNSConfig(), IPS, 53, None)
    assert out == ".:53 {\n    bind 169.254.20.10 10.96.0.10 \n}\n"


def test_missing_cluster_ip_prints_like_a_nil_go_ip() -> None:
    out, _ = render("forward . __PILLAR__CLUSTER__DNS__\n", KubeDNSConfig(), IPS, 53, None)
    assert out == "forward . <nil>\n"


def test_upstream_nameservers_replace_the_tcp_block_with_udp() -> None:
    base = (".:53 {\n    errors\n    forward . __PILLAR__UPSTREAM__SERVERS__ {\n"
            "            force_tcp\n    }\n}\n")
    out, warnings = render(base, KubeDNSConfig({}, ("1.1.1.1", "8.8.8.8:53")), IPS, 53, None)
    assert out == ".:53 {\n    errors\n    forward . 1.1.1.1 8.8.8.8:53\n}\n"
    assert warnings == []


def test_upstream_nameservers_in_a_udp_block_warn() -> None:
    out, warnings = render(STOCK, KubeDNSConfig({}, ("1.1.1.1",)), IPS, 53, "10.96.0.11")
    assert "forward . 1.1.1.1\n" in out
    assert warnings == ["Did not find TCP upstream block to replace, assuming upstreams "
                        "already use UDP."]


def test_stub_domains_are_appended_sorted() -> None:
    cfg = KubeDNSConfig({"z.corp": ("10.0.0.2",), "acme.local": ("10.0.0.1", "10.0.0.3:5353")})
    out, _ = render(".:53 {\n}\n", cfg, IPS, 1053, None)
    assert out == (
        ".:53 {\n}\n"
        "\nacme.local:1053 {\n    errors\n    cache 30\n    bind 169.254.20.10 10.96.0.10\n"
        "    forward . 10.0.0.1 10.0.0.3:5353\n}\n"
        "\nz.corp:1053 {\n    errors\n    cache 30\n    bind 169.254.20.10 10.96.0.10\n"
        "    forward . 10.0.0.2\n}\n")
    assert len(build_sites(parse_corefile(out, "Corefile"))) == 3


def test_parse_kubedns_configmap() -> None:
    cfg = parse_kubedns({"stubDomains": json.dumps({"acme.local": ["1.2.3.4"]}),
                         "upstreamNameservers": json.dumps(["8.8.8.8", "[2001:db8::1]:53"]),
                         "federations": "ignored"})
    assert cfg.stub_domains == {"acme.local": ("1.2.3.4",)}
    assert cfg.upstream_nameservers == ("8.8.8.8", "[2001:db8::1]:53")
    assert parse_kubedns({}) == KubeDNSConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"stubDomains": "{"}, "invalid stubDomains", id="bad-json"),
        pytest.param({"stubDomains": "[]"}, "not a JSON object", id="not-object"),
        pytest.param({"stubDomains": '{"Bad_Domain": ["1.2.3.4"]}'}, "invalid domain name",
                     id="bad-domain"),
        pytest.param({"stubDomains": '{"acme.local": ["ns.acme.local"]}'}, "invalid nameserver",
                     id="hostname-nameserver"),
        pytest.param({"stubDomains": '{"acme.local": "1.2.3.4"}'}, "not a list", id="not-list"),
        pytest.param({"upstreamNameservers": '["1.1.1.1:99999"]'}, "invalid nameserver",
                     id="bad-port"),
        pytest.param({"upstreamNameservers": '["1.1.1.1","1.1.1.2","1.1.1.3","1.1.1.4"]'},
                     "more than three", id="four-upstreams"),
    ],
)
def test_invalid_kubedns_configmap(data: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_kubedns(data)


def test_read_config_dir_skips_hidden_and_subdirs(tmp_path: Path) -> None:
    (tmp_path / "stubDomains").write_text("{}")
    (tmp_path / "..data").mkdir()  # what a mounted ConfigMap looks like
    (tmp_path / ".hidden").write_text("x")
    assert read_config_dir(str(tmp_path)) == {"stubDomains": "{}"}
    (tmp_path / "bin").write_bytes(b"\xff")
    with pytest.raises(ValueError, match="non-utf8"):
        read_config_dir(str(tmp_path))


def make_node(tmp_path: Path, base: str, cm: dict[str, str] | None = None) -> NodeLocal:
    (tmp_path / "Corefile.base").write_text(base)
    cmdir = tmp_path / "kube-dns"
    cmdir.mkdir()
    for k, v in (cm or {}).items():
        (cmdir / k).write_text(v)
    params = Params(local_ips=IPS, local_port=53, interface="nodelocaldns",
                    setup_interface=False, setup_iptables=False, setup_ebtables=False,
                    skip_teardown=False,
                    sync_interval=60.0, base_corefile=str(tmp_path / "Corefile.base"),
                    corefile=str(tmp_path / "Corefile"), kubedns_cm=str(cmdir),
                    upstream_svc="kube-dns-upstream", health_port=8080, pidfile="",
                    metrics_address="127.0.0.1:0", lockfile=str(tmp_path / "node.lock"))
    return NodeLocal(params, {"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.11"})


def test_write_corefile_and_rerender_on_changes(tmp_path: Path) -> None:
    node = make_node(tmp_path, STOCK)
    conf = tmp_path / "Corefile"
    assert node.write_corefile() is True
    assert "forward . /etc/resolv.conf" in conf.read_text()
    assert node.write_corefile() is False  # nothing changed: not rewritten
    (tmp_path / "kube-dns" / "stubDomains").write_text('{"acme.local": ["10.0.0.1"]}')
    assert node.write_corefile() is True
    assert "acme.local:53 {" in conf.read_text()
    (tmp_path / "Corefile.base").write_text(STOCK.replace("cache 30", "cache 60"))
    assert node.write_corefile() is True
    text = conf.read_text()
    assert "cache 60" in text and "acme.local:53 {" in text


def test_invalid_configmap_update_is_ignored(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    node = make_node(tmp_path, STOCK, {"upstreamNameservers": '["1.1.1.1"]'})
    assert node.write_corefile() is True
    (tmp_path / "kube-dns" / "upstreamNameservers").write_text("[not json")
    logger = logging.getLogger("linkdns.nodelocal")
    logger.addHandler(caplog.handler)
    try:
        assert node.write_corefile() is False
    finally:
        logger.removeHandler(caplog.handler)
    assert "forward . 1.1.1.1" in (tmp_path / "Corefile").read_text()
    assert "Invalid kube-dns configuration, ignoring update" in caplog.text


def test_missing_base_corefile_leaves_conf_alone(tmp_path: Path) -> None:
    node = make_node(tmp_path, STOCK)
    (tmp_path / "Corefile.base").unlink()
    (tmp_path / "Corefile").write_text("old\n")
    assert node.write_corefile() is False
    assert (tmp_path / "Corefile").read_text() == "old\n"
