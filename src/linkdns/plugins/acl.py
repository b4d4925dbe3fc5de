"""acl: allow, block, filter or drop queries by client address and query type (CoreDNS's acl).

``acl [ZONES...] { ACTION [type QTYPE...] [net SOURCE...] }``, ACTION one of allow, block,
filter, drop. Several ``acl`` directives in one block make one handler whose rules are
checked in order, as CoreDNS does: a rule applies when the query name is in one of its zones;
its policies are tried in order and the first whose type and source match decides. ``allow``
ends the checks (later rules are not consulted), ``block`` answers REFUSED, ``filter`` an
empty NOERROR (each with an RFC 8914 Extended DNS Error, Blocked / Filtered, when the client
sent EDNS), ``drop`` answers nothing (``plugin.DROPPED``). A query no policy matches is allowed.

The source is the query's peer address (IPv4-mapped IPv6 peers count as IPv4, as Go's
iptree sees them). acl is not ``hit_transparent``: a block with acl answers cache hits
through the slow path, so the rules always run before the cache answers.

Counters are plain integers in one collector per registry (``env.collector``), read at scrape
time: ``coredns_acl_{blocked,filtered,dropped}_requests_total{server,zone,view}`` and
``coredns_acl_allowed_requests_total{server,view}`` (``view`` is always empty).
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from linkdns import plugin, wire
from linkdns.corefile import Directive
from linkdns.metrics import VIEW
from linkdns.plugin import Args, Handler, PluginSpec, register
from linkdns.request import Request
from linkdns.writer import Writer
from linkdns.zones import zone_match

if TYPE_CHECKING:
    from linkdns.plugin import Env

log = logging.getLogger("linkdns.plugin.acl")
_A = Args("acl")

ALLOW, BLOCK, FILTER, DROP = "allow", "block", "filter", "drop"
ACTIONS = (ALLOW, BLOCK, FILTER, DROP)

# RFC 8914 Extended DNS Error info-codes CoreDNS's acl sets.
EDE_OPTION = 15
EDE_BLOCKED = 15
EDE_FILTERED = 17

# miekg/dns StringToType (what CoreDNS's ``type`` section accepts; names are case-sensitive).
_TYPE_TABLE = """
    A=1 NS=2 MD=3 MF=4 CNAME=5 SOA=6 MB=7 MG=8 MR=9 NULL=10 PTR=12 HINFO=13 MINFO=14 MX=15
    TXT=16 RP=17 AFSDB=18 X25=19 ISDN=20 RT=21 NSAP-PTR=23 SIG=24 KEY=25 PX=26 GPOS=27
    AAAA=28 LOC=29 NXT=30 EID=31 NIMLOC=32 SRV=33 ATMA=34 NAPTR=35 KX=36 CERT=37 DNAME=39
    OPT=41 APL=42 DS=43 SSHFP=44 IPSECKEY=45 RRSIG=46 NSEC=47 DNSKEY=48 DHCID=49 NSEC3=50
    NSEC3PARAM=51 TLSA=52 SMIMEA=53 HIP=55 NINFO=56 RKEY=57 TALINK=58 CDS=59 CDNSKEY=60
    OPENPGPKEY=61 CSYNC=62 ZONEMD=63 SVCB=64 HTTPS=65 SPF=99 UINFO=100 UID=101 GID=102
    UNSPEC=103 NID=104 L32=105 L64=106 LP=107 EUI48=108 EUI64=109 NXNAME=128 TKEY=249
    TSIG=250 IXFR=251 AXFR=252 MAILB=253 MAILA=254 ANY=255 URI=256 CAA=257 AVC=258
    AMTRELAY=260 RESINFO=261 TA=32768 DLV=32769
"""
QTYPES: dict[str, int] = {
    name: int(num) for name, num in (pair.split("=") for pair in _TYPE_TABLE.split())
}

#: (IP version, network address, netmask) as integers
Net = tuple[int, int, int]
#: (IP version, address) of a client
Addr = tuple[int, int]


@dataclass(frozen=True)
class Policy:
    """One line of an acl block. ``None`` means "any" (type or source)."""

    action: str
    qtypes: frozenset[int] | None = None
    nets: tuple[Net, ...] | None = None

    def matches(self, qtype: int, addr: Addr) -> bool:
        if self.qtypes is not None and qtype not in self.qtypes:
            return False
        if self.nets is None:
            return True
        ver, ip = addr
        return any(v == ver and ip & mask == net for v, net, mask in self.nets)


@dataclass
class Rule:
    """One ``acl`` directive: its zones (``None``: the server block's) and policies."""

    zones: list[str] | None
    policies: list[Policy] = field(default_factory=list)


# -- parsing ---------------------------------------------------------------------------------




def _net(d: Directive, token: str) -> Net:
    """CoreDNS's normalize + net.ParseCIDR: a bare address is a /32 (or /128 with a ':')."""
    text = token if "/" in token else token + ("/128" if ":" in token else "/32")
    addr, _, bits = text.partition("/")
    try:
        if not (bits.isascii() and bits.isdigit()):
            raise ValueError(bits)
        n = ipaddress.ip_network(f"{addr}/{bits}", strict=False)
    except ValueError:
        raise _A.err(d, f'illegal CIDR notation "{text}"') from None
    return n.version, int(n.network_address), int(n.netmask)


def _policy(d: Directive) -> Policy:
    action = d.name.lower()
    if action not in ACTIONS:
        raise _A.err(d, f"unexpected token \"{d.name}\"; expect 'allow', 'block', 'filter' or "
                      "'drop'")
    if d.block is not None:
        raise _A.err(d, f"unexpected block after '{d.name}'")
    qtypes: set[int] | None = None
    nets: list[Net] | None = None
    any_type = any_net = False
    args = list(d.args)
    while args:
        section = args.pop(0).lower()
        if section not in ("type", "net"):
            raise _A.err(d, f"unexpected token \"{section}\"; expect 'type | net'")
        tokens: list[str] = []
        while args and args[0].lower() not in ("type", "net"):
            tokens.append(args.pop(0))
        if not tokens:
            raise _A.err(d, f'no token specified in "{section}" section')
        if section == "type":
            qtypes = set() if qtypes is None else qtypes
            for tok in tokens:
                if tok == "*":
                    any_type = True
                    break  # as CoreDNS: what follows '*' in this section is not read
                if tok not in QTYPES:
                    raise _A.err(d, f'unexpected token "{tok}"; expect legal QTYPE')
                qtypes.add(QTYPES[tok])
        else:
            nets = [] if nets is None else nets
            for tok in tokens:
                if tok == "*":
                    any_net = True
                    break
                nets.append(_net(d, tok))
    return Policy(
        action,
        None if qtypes is None or any_type else frozenset(qtypes),
        None if nets is None or any_net else tuple(nets),
    )


def parse(d: Directive) -> Rule:
    """One ``acl [ZONES...] { ... }`` directive."""
    rule = Rule(_A.zones(d, d.args) if d.args else None)
    for sub in d.block or []:
        rule.policies.append(_policy(sub))
    return rule


def parse_all(ds: list[Directive]) -> list[Rule]:
    """Every ``acl`` of a block, in order: one handler checks them all (CoreDNS's loop)."""
    return [parse(d) for d in ds]


# -- metrics ---------------------------------------------------------------------------------

SHARED_KEY = "acl.collector"


class AclCounts(Collector):
    """Plain-integer counters of every acl of one server, turned into families at scrape."""

    def __init__(self) -> None:
        self.blocked: dict[tuple[str, str], int] = {}
        self.filtered: dict[tuple[str, str], int] = {}
        self.dropped: dict[tuple[str, str], int] = {}
        self.allowed: dict[str, int] = {}

    @staticmethod
    def _families() -> list[CounterMetricFamily]:
        zl = ["server", "zone", "view"]
        return [
            CounterMetricFamily("coredns_acl_blocked_requests",
                                "Counter of DNS requests being blocked.", labels=zl),
            CounterMetricFamily("coredns_acl_filtered_requests",
                                "Counter of DNS requests being filtered.", labels=zl),
            CounterMetricFamily("coredns_acl_allowed_requests",
                                "Counter of DNS requests being allowed.",
                                labels=["server", "view"]),
            CounterMetricFamily("coredns_acl_dropped_requests",
                                "Counter of DNS requests being dropped.", labels=zl),
        ]

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        blocked, filtered, allowed, dropped = fams = self._families()
        for fam, counts in ((blocked, self.blocked), (filtered, self.filtered),
                            (dropped, self.dropped)):
            for (server, zone), n in sorted(list(counts.items())):
                fam.add_metric([server, zone, VIEW], n)
        for server, n in sorted(list(self.allowed.items())):
            allowed.add_metric([server, VIEW], n)
        return iter(fams)


def counts_for(env: Env) -> AclCounts:
    """The counters of this server's registry (created and registered on first use)."""
    return env.collector(SHARED_KEY, AclCounts)


# -- serving ---------------------------------------------------------------------------------


def reply(q: wire.Query, rc: int, ede: int) -> bytes:
    """CoreDNS's acl reply (``SetRcode``: ID, question, RD/CD copied, no RA/AA, no records),
    with the client's OPT carrying an Extended DNS Error when the client sent EDNS."""
    return wire.error_reply(q, q.data, rc, ra=False,
                            options=struct.pack(">HHH", EDE_OPTION, 2, ede))


def client_addr(host: Any) -> Addr | None:
    """The client's address as (version, int); IPv4-mapped IPv6 is IPv4; None if unreadable."""
    text = str(host).split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return 4, int(ip.ipv4_mapped)
    return ip.version, int(ip)


_ADDR_MEMO_MAX = 4096


class Acl(Handler):
    name = "acl"
    # hit_transparent stays False: the rules must run before the cache answers, so a block
    # with acl serves cache hits through the slow path (site.py turns the hit path off).

    def __init__(self, rules: list[tuple[tuple[str, ...], tuple[Policy, ...]]],
                 counts: AclCounts) -> None:
        super().__init__()
        self.rules = rules
        self.counts = counts
        self._addrs: dict[Any, Addr | None] = {}

    def _addr(self, host: Any) -> Addr | None:
        memo = self._addrs
        if host in memo:
            return memo[host]
        if len(memo) >= _ADDR_MEMO_MAX:
            memo.clear()
        a = memo[host] = client_addr(host)
        return a

    def action(self, req: Request) -> tuple[str, str]:
        """(action, zone) for ``req``: the first matching policy of the first rule that has
        one; ("allow", "") when none matches or an allow policy does."""
        name = req.name
        for zones, policies in self.rules:
            zone = zone_match(name, zones)
            if not zone:
                continue
            addr = self._addr(req.peer[0])
            if addr is None:
                log.error("Blocking request. Unable to parse source address: %s", req.peer[0])
                return BLOCK, zone
            for p in policies:
                if p.matches(req.qtype, addr):
                    if p.action == ALLOW:
                        return ALLOW, ""
                    return p.action, zone
        return ALLOW, ""

    async def serve(self, req: Request, w: Writer) -> int:
        action, zone = self.action(req)
        if action == ALLOW:
            c = self.counts.allowed
            c[req.server] = c.get(req.server, 0) + 1
            return await self.next_serve(req, w)
        key = (req.server, zone)
        if action == DROP:
            d = self.counts.dropped
            d[key] = d.get(key, 0) + 1
            return plugin.DROPPED
        if action == BLOCK:
            w.send(reply(req.q, wire.REFUSED, EDE_BLOCKED), "acl")
            d = self.counts.blocked
        else:
            w.send(reply(req.q, wire.NOERROR, EDE_FILTERED), "acl")
            d = self.counts.filtered
        d[key] = d.get(key, 0) + 1
        return wire.NOERROR


def build(rules: list[Rule], env: Env) -> Acl:
    compiled = [(tuple(r.zones if r.zones is not None else env.zones), tuple(r.policies))
                for r in rules]
    return Acl(compiled, counts_for(env))


register(PluginSpec("acl", parse, build, once=False, parse_all=parse_all))
