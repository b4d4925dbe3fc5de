"""The Corefile node-cache writes: the base Corefile with its ``__PILLAR__`` variables filled in.

As node-cache's cmd/node-cache/app/configmap.go (updateCorefile):

* ``__PILLAR__UPSTREAM__SERVERS__`` -> ``/etc/resolv.conf``, or the kube-dns ConfigMap's
  ``upstreamNameservers`` (then a ``force_tcp`` forward block written exactly as node-cache's
  template is turned into a plain UDP one);
* ``__PILLAR__CLUSTER__DNS__`` -> the cluster IP of ``-upstreamsvc``, read from the
  ``<NAME>_SERVICE_HOST`` variable Kubernetes puts in every pod (``<nil>`` when unset, as Go
  prints a nil IP -- the forward plugin then rejects the Corefile);
* ``__PILLAR__LOCAL__DNS__`` -> the ``-localip`` addresses, space-separated;
* ``__PILLAR__DNS__SERVER__`` -> removed;
* one block per kube-dns ``stubDomains`` entry appended at the end.

``__PILLAR__DNS__DOMAIN__`` is not node-cache's: the install instructions' ``sed`` fills it in.
Everything here is pure except :func:`read_config_dir` and :func:`write_atomic`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field

UPSTREAM_SERVERS = "__PILLAR__UPSTREAM__SERVERS__"
CLUSTER_DNS = "__PILLAR__CLUSTER__DNS__"
LOCAL_DNS = "__PILLAR__LOCAL__DNS__"
DNS_SERVER = "__PILLAR__DNS__SERVER__"

STUB_TTL = 30
UPSTREAM_TCP_BLOCK = ("\n    forward . __PILLAR__UPSTREAM__SERVERS__ {\n"
                      "            force_tcp\n    }\n")
UPSTREAM_UDP_BLOCK = "\n    forward . __PILLAR__UPSTREAM__SERVERS__\n"
STUB_BLOCK = ("\n{domain}:{port} {{\n    errors\n    cache {ttl}\n    bind {local}\n"
              "    forward . {servers}\n}}\n")

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")


@dataclass(frozen=True)
class KubeDNSConfig:
    """What node-cache uses of the kube-dns ConfigMap."""

    stub_domains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    upstream_nameservers: tuple[str, ...] = ()


def service_env(svc: str) -> str:
    """``kube-dns-upstream`` -> ``KUBE_DNS_UPSTREAM_SERVICE_HOST`` (node-cache's toSvcEnv)."""
    return svc.replace("-", "_").upper() + "_SERVICE_HOST"


def cluster_dns_ip(svc: str, environ: Mapping[str, str]) -> str | None:
    """The service's cluster IP from the environment, normalised; None when unset or bad."""
    try:
        return str(ipaddress.ip_address(environ.get(service_env(svc), "")))
    except ValueError:
        return None


def render(base: str, cfg: KubeDNSConfig, local_ips: tuple[str, ...], port: int,
           cluster_dns: str | None) -> tuple[str, list[str]]:
    """The Corefile to write, and warnings to log."""
    warnings: list[str] = []
    local = " ".join(local_ips)
    servers = " ".join(cfg.upstream_nameservers)
    out = base
    if not servers:
        out = out.replace(UPSTREAM_SERVERS, "/etc/resolv.conf")
    else:
        out = out.replace(UPSTREAM_TCP_BLOCK, UPSTREAM_UDP_BLOCK.replace(UPSTREAM_SERVERS, servers))
        if UPSTREAM_SERVERS in out:
            warnings.append("Did not find TCP upstream block to replace, "
                            "assuming upstreams already use UDP.")
            out = out.replace(UPSTREAM_SERVERS, servers)
    out = out.replace(CLUSTER_DNS, cluster_dns if cluster_dns is not None else "<nil>")
    out = out.replace(LOCAL_DNS, local)
    out = out.replace(DNS_SERVER, "")
    for domain in sorted(cfg.stub_domains):
        out += STUB_BLOCK.format(domain=domain, port=port, ttl=STUB_TTL, local=local,
                                 servers=" ".join(cfg.stub_domains[domain]))
    return out, warnings


def read_config_dir(path: str) -> dict[str, str]:
    """Every non-hidden file directly in ``path`` (a mounted ConfigMap): name -> text.

    Raises OSError (missing, not a directory) or ValueError (not UTF-8).
    """
    data: dict[str, str] = {}
    with os.scandir(path) as it:
        for e in it:
            if e.name.startswith(".") or e.is_dir():
                continue
            with open(e.path, "rb") as f:
                raw = f.read()
            try:
                data[e.name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"non-utf8 data in {e.path}") from None
    return data


def parse_kubedns(data: Mapping[str, str]) -> KubeDNSConfig:
    """``stubDomains`` (JSON object) and ``upstreamNameservers`` (JSON list), validated as
    kube-dns and node-cache do. Raises ValueError."""
    stubs: dict[str, tuple[str, ...]] = {}
    if data.get("stubDomains", "").strip():
        try:
            raw = json.loads(data["stubDomains"])
        except json.JSONDecodeError as e:
            raise ValueError(f"invalid stubDomains: {e}") from None
        if not isinstance(raw, dict):
            raise ValueError("invalid stubDomains: not a JSON object")
        for domain, ns in raw.items():
            if len(domain) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(domain):
                raise ValueError(f"invalid domain name: {domain!r}")
            stubs[domain] = _nameservers(ns, f"stub domain {domain}")
    upstream: tuple[str, ...] = ()
    if data.get("upstreamNameservers", "").strip():
        try:
            raw_up = json.loads(data["upstreamNameservers"])
        except json.JSONDecodeError as e:
            raise ValueError(f"invalid upstreamNameservers: {e}") from None
        upstream = _nameservers(raw_up, "upstreamNameservers")
        if len(upstream) > 3:
            raise ValueError("upstreamNameserver cannot have more than three entries")
    return KubeDNSConfig(stubs, upstream)


def _nameservers(raw: object, what: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ValueError(f"invalid nameservers for {what}: not a list of strings")
    for ns in raw:
        if not _is_ip_port(ns):
            raise ValueError(f"invalid nameserver {ns!r} for {what}")
    return tuple(raw)


def _is_ip_port(text: str) -> bool:
    """``IP``, ``IP:PORT``, ``[IPv6]:PORT``, optionally ``dns://`` or ``tls://`` first."""
    for scheme in ("dns://", "tls://"):
        text = text.removeprefix(scheme)
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            return False
        port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def write_atomic(path: str, text: str) -> None:
    """Replace ``path`` whole, so the reload plugin never reads half a file."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".linkdns-", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
