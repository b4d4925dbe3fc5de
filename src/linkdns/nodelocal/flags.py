"""node-cache's command line (k8s-dns-node-cache, cmd/node-cache/main.go), added to linkdns's.

Names and defaults are node-cache's. Booleans take Go's syntax (``-setupiptables=false``,
``-skipteardown``, ``-skipteardown=true``; ``1 t T TRUE true True 0 f F FALSE false False``).
Node-local mode is on when ``-localip`` is given; without it none of these flags does anything.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass

from linkdns import values
from linkdns.nodelocal import shared

#: node-cache reads the kube-dns ConfigMap from here when -kubednscm is empty and it exists.
DEFAULT_KUBEDNS_CM = "/etc/kube-dns"

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def go_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


def go_duration(text: str) -> float:
    """A Go duration (``60s``, ``1m``, ``500ms``) or bare seconds; must be positive."""
    try:
        secs = values.parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if secs <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive: {text!r}")
    return secs


def add_flags(p: argparse.ArgumentParser) -> None:
    """Add node-cache's flags to linkdns's parser (-conf, -pidfile, -dns.port already exist)."""
    g = p.add_argument_group("node-local mode (k8s-dns-node-cache flags; on when -localip is set)")

    def boolean(name: str, default: bool, text: str) -> None:
        g.add_argument(name, dest=name.lstrip("-").replace("-", "_"), type=go_bool, nargs="?",
                       const=True, default=default, metavar="BOOL",
                       help=f"{text} (default {str(default).lower()})")

    g.add_argument("-localip", default=None,
                   help="comma-separated IP addresses to bind the cache to; turns node-local mode on")
    boolean("-setupinterface", True, "create the interface holding the local IPs")
    g.add_argument("-interfacename", default="nodelocaldns",
                   help="name of the interface to create (default nodelocaldns)")
    g.add_argument("-syncinterval", type=go_duration, default=60.0, metavar="DURATION",
                   help="how often to re-check the iptables rules and interface (default 60s)")
    boolean("-setupiptables", True, "add the NOTRACK/ACCEPT iptables rules")
    boolean("-skipteardown", False, "leave the rules and interface in place at exit")
    g.add_argument("-basecorefile", default="/etc/coredns/Corefile.base",
                   help="template Corefile (default /etc/coredns/Corefile.base)")
    g.add_argument("-kubednscm", default="",
                   help=f"kube-dns ConfigMap directory (default {DEFAULT_KUBEDNS_CM} if it exists)")
    g.add_argument("-upstreamsvc", default="kube-dns",
                   help="service whose cluster IP replaces __PILLAR__CLUSTER__DNS__ (default kube-dns)")
    g.add_argument("-health-port", dest="health_port", default="8080",
                   help="port of the health plugin, for the iptables rules (default 8080)")
    # Accepted for compatibility with node-cache's manifests; see docs/nodelocal.md.
    g.add_argument("-corefile", default="/etc/Corefile",
                   help="ignored: -conf names the Corefile written, as in node-cache")
    g.add_argument("-metrics-listen-address", dest="metrics_listen_address",
                   default="0.0.0.0:9353",
                   help="address of node-cache's own metrics (coredns_nodecache_setup_errors_total;"
                        " default 0.0.0.0:9353)")
    boolean("-setupebtables", False,
            "add the ebtables broute rule for bridge mode (node-cache before 2021)")
    g.add_argument("-lockfile", default="",
                   help="not node-cache's: the lock file instances on the node share (default "
                        "/run/linkdns/nodelocal-IFACE-NETNS.lock)")
    g.add_argument("-initialdelay", default="10", help="ignored (unused by node-cache too)")
    boolean("-reloadwithsignal", False, "ignored: the reload plugin watches -conf")


@dataclass(frozen=True)
class Params:
    """Validated node-local settings (node-cache's ConfigParams)."""

    local_ips: tuple[str, ...]  # as written, in order
    local_port: int
    interface: str
    setup_interface: bool
    setup_iptables: bool
    setup_ebtables: bool
    skip_teardown: bool
    sync_interval: float
    base_corefile: str
    corefile: str
    kubedns_cm: str  # "" = none
    upstream_svc: str
    health_port: int
    pidfile: str
    metrics_address: str
    lockfile: str

    @property
    def ipv6(self) -> bool:
        return ipaddress.ip_address(self.local_ips[0]).version == 6

    @property
    def local_ip_str(self) -> str:
        """The IPs space-separated, as node-cache puts them in ``bind`` lines."""
        return " ".join(self.local_ips)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Params:
        """Raise ValueError with node-cache's messages for a bad -localip or -health-port."""
        ips: list[str] = []
        for text in str(args.localip).split(","):
            try:
                ipaddress.ip_address(text)
            except ValueError:
                raise ValueError(f"invalid localip specified - {text!r}") from None
            ips.append(text)
        v6 = ipaddress.ip_address(ips[0]).version == 6
        for text in ips:
            if (ipaddress.ip_address(text).version == 6) != v6:
                raise ValueError(f"unexpected IP Family for localIP - {text!r}, want IPv6={v6}")
        if not str(args.health_port).isdigit():
            raise ValueError(f"invalid healthcheck port specified - {args.health_port!r}")
        cm = args.kubednscm
        if not cm and os.path.exists(DEFAULT_KUBEDNS_CM):
            cm = DEFAULT_KUBEDNS_CM
        return cls(
            local_ips=tuple(ips), local_port=args.dns_port, interface=args.interfacename,
            setup_interface=args.setupinterface, setup_iptables=args.setupiptables,
            setup_ebtables=args.setupebtables, skip_teardown=args.skipteardown, sync_interval=args.syncinterval,
            base_corefile=args.basecorefile, corefile=args.conf, kubedns_cm=cm,
            upstream_svc=args.upstreamsvc, health_port=int(args.health_port),
            pidfile=args.pidfile, metrics_address=args.metrics_listen_address,
            lockfile=args.lockfile or shared.default_path(args.interfacename))
