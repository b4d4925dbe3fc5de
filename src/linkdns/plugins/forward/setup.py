"""forward: parse ``forward FROM TO... { ... }`` into a ForwardConfig (pure: no sockets).

Options, defaults and error texts follow CoreDNS's plugin/forward/setup.go and
plugin/pkg/parse/host.go. linkdns-only options: ``bufsize``, ``read_timeout``,
``query_timeout`` (see docs/plugins/forward.md).
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field

from linkdns import values, wire
from linkdns.corefile import Directive, parse_server_key
from linkdns.errors import ConfigError, WireError
from linkdns.plugin import Args

_A = Args("forward")

MAX_UPSTREAMS = 15
DNS_PORT = 53
TLS_PORT = 853

#: miekg/dns StringToRcode (the names ``failover`` and ``next`` accept).
RCODES: dict[str, int] = {
    "NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5,
    "YXDOMAIN": 6, "YXRRSET": 7, "NXRRSET": 8, "NOTAUTH": 9, "NOTZONE": 10, "BADSIG": 16,
    "BADVERS": 16, "BADKEY": 17, "BADTIME": 18, "BADMODE": 19, "BADNAME": 20, "BADALG": 21,
    "BADTRUNC": 22, "BADCOOKIE": 23,
}


@dataclass(frozen=True)
class UpstreamSpec:
    """One TO: an IP address, a port, and whether it speaks DNS over TLS."""

    host: str
    port: int
    tls: bool = False

    @property
    def addr(self) -> str:
        """``host:port`` as CoreDNS writes it (the ``to`` metric label)."""
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{self.port}"


@dataclass
class ForwardConfig:
    from_zone: str = "."
    upstreams: list[UpstreamSpec] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    force_tcp: bool = False
    prefer_udp: bool = False
    #: EDNS UDP size offered upstream (linkdns); None = forward the client's OPT as is
    bufsize: int | None = None
    expire: float = 10.0
    max_fails: int = 2
    policy: str = "random"
    hc_interval: float = 0.5
    hc_recursion: bool = True
    hc_domain: str = "."
    max_concurrent: int = 0
    tls_args: list[str] = field(default_factory=list)
    tls_servername: str = ""
    failover: frozenset[int] = frozenset()
    next_rcodes: frozenset[int] = frozenset()
    failfast_all_unhealthy: bool = False
    max_connect_attempts: int = 0
    min_dial_timeout: float = 1.0
    max_dial_timeout: float = 30.0
    max_age: float = 0.0
    max_idle_conns: int = 0
    read_timeout: float = 2.0  # linkdns: CoreDNS's fixed 2s per attempt
    query_timeout: float = 5.0  # linkdns: CoreDNS's fixed 5s per query
    file: str = ""
    line: int = 0
    ssl_context: ssl.SSLContext | None = None






def normalize_zone(d: Directive, text: str) -> str:
    try:
        return parse_server_key(text, d.file, d.line)[0].zone
    except ConfigError:
        raise _A.err(d, f"unable to normalize '{text}'") from None


def parse(d: Directive) -> ForwardConfig:
    """One ``forward`` line (and its block). Raises ConfigError with file:line."""
    if len(d.args) < 2:
        raise _A.argc(d)
    cfg = ForwardConfig(file=d.file, line=d.line)
    cfg.from_zone = normalize_zone(d, d.args[0])
    cfg.upstreams = parse_to(d, d.args[1:])
    if len(cfg.upstreams) > MAX_UPSTREAMS:
        raise _A.err(d, f"more than {MAX_UPSTREAMS} TOs configured: {len(cfg.upstreams)}")
    for sub in d.block or []:
        _option(sub, cfg)
    if cfg.ssl_context is None and any(u.tls for u in cfg.upstreams):
        cfg.ssl_context = tls_context(d, [])
    return cfg


def parse_to(d: Directive, args: list[str]) -> list[UpstreamSpec]:
    """``IP``, ``IP:PORT``, ``[v6]:PORT``, ``dns://...``, ``tls://...`` or a resolv.conf file."""
    out: list[UpstreamSpec] = []
    for arg in args:
        scheme, rest = "dns", arg
        if "://" in arg:
            scheme, rest = arg.split("://", 1)
            scheme = scheme.lower()
            if scheme not in ("dns", "tls"):
                raise _A.err(d, f"'{scheme}' is not supported as a destination protocol "
                              f"in forward: {arg}")
        tls = scheme == "tls"
        try:
            host, port = values.split_host_port(rest, TLS_PORT if tls else DNS_PORT)
        except ValueError:
            host, port = "", 0
        ip = _ip(host)
        if ip is None:
            servers = _resolv_conf(rest)
            if servers is None:
                raise _A.err(d, f'not an IP address or file: "{rest}"')
            out.extend(UpstreamSpec(s, DNS_PORT, tls) for s in servers)
            continue
        out.append(UpstreamSpec(ip, port, tls))
    if not out:
        raise _A.err(d, "no nameservers found")
    return out


def _ip(host: str) -> str | None:
    """The canonical text of an IP address (``%zone`` kept for link-local IPv6), or None."""
    addr, _, zone = host.partition("%")
    try:
        text = str(ipaddress.ip_address(addr))
    except ValueError:
        return None
    return f"{text}%{zone}" if zone else text


def _resolv_conf(path: str) -> list[str] | None:
    """``nameserver`` addresses of a resolv.conf-format file; None if it can't be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    servers: list[str] = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            ip = _ip(parts[1])
            if ip is not None:
                servers.append(ip)
    return servers


def _duration(sub: Directive, text: str) -> float:
    return _A.duration(sub, text, f"{sub.name}: invalid duration {text!r}")


def _int(sub: Directive, text: str, lo: int = 0, hi: int = 2**31 - 1) -> int:
    n = _A.integer(sub, text, f"{sub.name}: invalid integer {text!r}")
    if n < 0:
        raise _A.err(sub, f"{sub.name} can't be negative: {n}")
    if not lo <= n <= hi:
        raise _A.err(sub, f"{sub.name} must be between {lo} and {hi}: {n}")
    return n


def _rcodes(sub: Directive) -> frozenset[int]:
    if not sub.args:
        raise _A.argc(sub)
    out = set()
    for a in sub.args:
        rc = RCODES.get(a.upper())
        if rc is None:
            raise _A.err(sub, f"{a} is not a valid rcode")
        out.add(rc)
    return frozenset(out)


def _option(sub: Directive, cfg: ForwardConfig) -> None:
    name, args = sub.name, sub.args
    if sub.block:
        raise _A.err(sub, f"'{name}' takes no block")
    flags = {"force_tcp", "prefer_udp", "failfast_all_unhealthy_upstreams"}
    single = {"max_fails", "expire", "policy", "max_concurrent", "tls_servername", "bufsize",
              "max_connect_attempts", "max_age", "max_idle_conns", "read_timeout",
              "query_timeout"}
    if name in flags and args:
        raise _A.argc(sub)
    if name in single and len(args) != 1:
        raise _A.argc(sub)
    match name:
        case "except":
            if not args:
                raise _A.argc(sub)
            cfg.ignored.extend(normalize_zone(sub, a) for a in args)
        case "force_tcp":
            cfg.force_tcp = True
        case "prefer_udp":
            cfg.prefer_udp = True
        case "failfast_all_unhealthy_upstreams":
            cfg.failfast_all_unhealthy = True
        case "max_fails":
            cfg.max_fails = _int(sub, args[0])
        case "expire":
            cfg.expire = _duration(sub, args[0])
        case "max_age":
            cfg.max_age = _duration(sub, args[0])
        case "max_idle_conns":
            cfg.max_idle_conns = _int(sub, args[0])
        case "max_connect_attempts":
            cfg.max_connect_attempts = _int(sub, args[0])
        case "max_concurrent":
            cfg.max_concurrent = _int(sub, args[0])
        case "bufsize":
            cfg.bufsize = _int(sub, args[0], 512, 65535)
        case "read_timeout" | "query_timeout":
            t = _duration(sub, args[0])
            if t <= 0:
                raise _A.err(sub, f"{name} must be positive: {args[0]}")
            setattr(cfg, name, t)
        case "policy":
            if args[0] not in ("random", "round_robin", "sequential"):
                raise _A.err(sub, f"unknown policy '{args[0]}'")
            cfg.policy = args[0]
        case "health_check":
            _health_check(sub, cfg)
        case "tls":
            if len(args) > 3:
                raise _A.argc(sub)
            cfg.tls_args = list(args)
            cfg.ssl_context = tls_context(sub, cfg.tls_args)
        case "tls_servername":
            cfg.tls_servername = args[0]
        case "failover":
            cfg.failover = _rcodes(sub)
        case "next":
            cfg.next_rcodes = _rcodes(sub)
        case "min_max_dial_timeout":
            if len(args) != 2:
                raise _A.argc(sub)
            lo, hi = _duration(sub, args[0]), _duration(sub, args[1])
            if lo <= 0 or hi < lo:
                raise _A.err(sub, f"{name}: need 0 < min <= max, got {args[0]} {args[1]}")
            cfg.min_dial_timeout, cfg.max_dial_timeout = lo, hi
        case _:
            raise _A.err(sub, f"unknown property '{name}'")


def _health_check(sub: Directive, cfg: ForwardConfig) -> None:
    if not sub.args:
        raise _A.argc(sub)
    cfg.hc_interval = _duration(sub, sub.args[0])
    cfg.hc_domain = "."
    rest = sub.args[1:]
    while rest:
        opt = rest.pop(0)
        if opt == "no_rec":
            cfg.hc_recursion = False
        elif opt == "domain":
            if not rest:
                raise _A.argc(sub)
            dom = rest.pop(0)
            try:
                wire.text_to_name(dom)
            except (WireError, UnicodeEncodeError):
                raise _A.err(sub, f"health_check: invalid domain name {dom}") from None
            cfg.hc_domain = dom.lower() if dom.endswith(".") else dom.lower() + "."
        else:
            raise _A.err(sub, f"health_check: unknown option {opt}")


def tls_context(d: Directive, args: list[str]) -> ssl.SSLContext:
    """CoreDNS's NewTLSConfigFromArgs: [] system CAs; [CA]; [CERT KEY]; [CERT KEY CA]."""
    try:
        ctx = ssl.create_default_context(cafile=args[0] if len(args) == 1 else
                                         args[2] if len(args) == 3 else None)
        if len(args) >= 2:
            ctx.load_cert_chain(args[0], args[1])
    except (OSError, ssl.SSLError) as e:
        raise _A.err(d, f"tls: {e}") from None
    return ctx
