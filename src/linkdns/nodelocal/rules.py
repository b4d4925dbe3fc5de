"""node-cache's iptables rules (and the ebtables broute rule it once had), via the commands.

As cmd/node-cache/app/cache_app.go (initIptables): for each local IP twelve rules that skip
connection tracking for DNS to and from it (and for the health check port) and accept it in
the filter table, each tagged ``-m comment --comment "NodeLocal DNS Cache: skip conntrack"``
(NOTRACK) or ``"NodeLocal DNS Cache: allow DNS traffic"`` (ACCEPT). node-cache before 2023
added the same rules without the comment; a rule present in either form counts as present
(adopted, not added again) and teardown deletes every copy of both forms, so a node moving
from node-cache to linkdns or back ends with one set.

Rules are checked with ``-C`` and inserted at the top with ``-I`` (node-cache's EnsureRule
with Prepend). Every call here blocks (it runs commands): the daemon calls these from a thread.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from linkdns.nodelocal.netif import CommandError, Runner, failure, run

SKIP_CONNTRACK = "NodeLocal DNS Cache: skip conntrack"
ALLOW_TRAFFIC = "NodeLocal DNS Cache: allow DNS traffic"


@dataclass(frozen=True)
class Rule:
    table: str
    chain: str
    #: node-cache's arguments, the comment match (if any) last
    args: tuple[str, ...]

    @property
    def forms(self) -> tuple[tuple[str, ...], ...]:
        """The arguments node-cache uses today, then the older form without the comment."""
        if len(self.args) > 4 and self.args[-4:-1] == ("-m", "comment", "--comment"):
            return (self.args, self.args[:-4])
        return (self.args,)

    def __str__(self) -> str:
        words = (f'"{a}"' if " " in a else a for a in self.args)  # as iptables-save quotes
        return f"-t {self.table} {self.chain} {' '.join(words)}"


def node_cache_rules(local_ips: Sequence[str], port: int, health_port: int) -> list[Rule]:
    """node-cache's rule set (initIptables), in its order, comments included."""
    dns, health = str(port), str(health_port)
    rules: list[Rule] = []
    for ip in local_ips:
        def r(table: str, chain: str, proto: str, way: str, p: str, target: str,
              ip: str = ip) -> Rule:
            addr, port_opt = ("-d", "--dport") if way == "to" else ("-s", "--sport")
            comment = SKIP_CONNTRACK if target == "NOTRACK" else ALLOW_TRAFFIC
            return Rule(table, chain, ("-p", proto, addr, ip, port_opt, p, "-j", target,
                                       "-m", "comment", "--comment", comment))
        rules += [
            # to the cache from other hosts/pods: no conntrack, and accept
            r("raw", "PREROUTING", "tcp", "to", dns, "NOTRACK"),
            r("raw", "PREROUTING", "udp", "to", dns, "NOTRACK"),
            r("filter", "INPUT", "tcp", "to", dns, "ACCEPT"),
            r("filter", "INPUT", "udp", "to", dns, "ACCEPT"),
            # replies from the cache
            r("raw", "OUTPUT", "tcp", "from", dns, "NOTRACK"),
            r("raw", "OUTPUT", "udp", "from", dns, "NOTRACK"),
            r("filter", "OUTPUT", "tcp", "from", dns, "ACCEPT"),
            r("filter", "OUTPUT", "udp", "from", dns, "ACCEPT"),
            # queries generated on the node (hostNetwork pods)
            r("raw", "OUTPUT", "tcp", "to", dns, "NOTRACK"),
            r("raw", "OUTPUT", "udp", "to", dns, "NOTRACK"),
            # the liveness probe to the health plugin
            r("raw", "OUTPUT", "tcp", "to", health, "NOTRACK"),
            r("raw", "OUTPUT", "tcp", "from", health, "NOTRACK"),
        ]
    return rules


class Found(enum.Enum):
    """What :meth:`IPTables.ensure` found."""

    PRESENT = "present"  # in node-cache's current form
    OLDER = "older"  # only in the older form without comment: adopted as it is
    ADDED = "added"  # in neither: inserted now (current form)


def iptables_cmd(ipv6: bool) -> str:
    return "ip6tables" if ipv6 else "iptables"


def _no_such_rule(out: str) -> bool:
    return "Bad rule" in out or "does a matching rule exist" in out


class IPTables:
    """``iptables -C/-I/-D`` (``ip6tables`` for IPv6) with the xtables lock waited on."""

    def __init__(self, ipv6: bool, runner: Runner = run) -> None:
        self.cmd = iptables_cmd(ipv6)
        self.run = runner

    def _argv(self, op: str, rule: Rule, args: Sequence[str]) -> list[str]:
        return [self.cmd, "-w", "5", "-t", rule.table, op, rule.chain, *args]

    def _exists(self, rule: Rule, args: Sequence[str]) -> bool:
        p = self.run(self._argv("-C", rule, args))
        if p.returncode == 0:
            return True
        if p.returncode == 1 and _no_such_rule(p.stderr + p.stdout):
            return False
        raise failure(p)

    def exists(self, rule: Rule) -> bool:
        """In either form."""
        return any(self._exists(rule, args) for args in rule.forms)

    def ensure(self, rule: Rule) -> Found:
        """Insert the rule (current form) at the top of its chain unless present in any form."""
        current, *older = rule.forms
        if self._exists(rule, current):
            return Found.PRESENT
        if any(self._exists(rule, args) for args in older):
            return Found.OLDER
        p = self.run(self._argv("-I", rule, current))
        if p.returncode != 0:
            raise failure(p)
        return Found.ADDED

    def delete(self, rule: Rule) -> int:
        """Delete every copy of the rule in every form; how many were deleted."""
        n = 0
        for args in rule.forms:
            for _ in range(100):
                p = self.run(self._argv("-D", rule, args))
                if p.returncode == 0:
                    n += 1
                    continue
                if p.returncode == 1 and _no_such_rule(p.stderr + p.stdout):
                    break
                raise failure(p)
        return n


def broute_rules(local_ips: Sequence[str], ipv6: bool) -> list[Rule]:
    """The rule node-cache added with ``-setupebtables`` (removed from it in 2021): frames for
    a local IP arriving on a bridge port get the bridge's MAC, so the node routes them to the
    cache instead of bridging them on. IPv6 uses ``--ip6-dst`` (node-cache passed
    ``--ip-dst``, which ebtables rejects for ``-p IPv6``)."""
    if ipv6:
        return [Rule("broute", "BROUTING", ("-p", "IPv6", "--ip6-dst", ip, "-j", "redirect"))
                for ip in local_ips]
    return [Rule("broute", "BROUTING", ("-p", "IPv4", "--ip-dst", ip, "-j", "redirect"))
            for ip in local_ips]


def _canonical(words: Sequence[str]) -> tuple[str, ...]:
    """A listed or given ebtables rule, comparable: no host prefix lengths, no default
    ``--redirect-target ACCEPT``."""
    out = [w.removesuffix("/32").removesuffix("/128") for w in words]
    if out[-2:] == ["--redirect-target", "ACCEPT"]:
        out = out[:-2]
    return tuple(out)


class EBTables:
    """``ebtables`` as node-cache used it: list the chain to check, append (``-A``), delete."""

    cmd = "ebtables"

    def __init__(self, runner: Runner = run) -> None:
        self.run = runner

    def count(self, rule: Rule) -> int:
        """Copies of the rule in its chain (0 when the chain cannot be listed: node-cache too
        then appends, and the append reports the error)."""
        p = self.run([self.cmd, "-t", rule.table, "-L", rule.chain, "--Lmac2"])
        if p.returncode != 0:
            return 0
        want = _canonical(rule.args)
        return sum(_canonical(line.split()) == want for line in p.stdout.splitlines()
                   if line.strip())

    def ensure(self, rule: Rule) -> Found:
        if self.count(rule):
            return Found.PRESENT
        p = self.run([self.cmd, "-t", rule.table, "-A", rule.chain, *rule.args])
        if p.returncode != 0:
            raise failure(p)
        return Found.ADDED

    def delete(self, rule: Rule) -> int:
        n = 0
        for _ in range(min(self.count(rule), 100)):
            p = self.run([self.cmd, "-t", rule.table, "-D", rule.chain, *rule.args])
            if p.returncode != 0:
                raise failure(p)
            n += 1
        return n


def is_lock_error(e: CommandError) -> bool:
    """node-cache's isLockedErr (counted as ``iptables_lock``)."""
    return "xtables lock" in str(e)
