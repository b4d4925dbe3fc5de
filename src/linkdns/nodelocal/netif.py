"""The interface holding the local IPs, and node-cache's iptables rules, via ``ip``/``iptables``.

As node-cache's pkg/netif/netif.go and cmd/node-cache/app/cache_app.go: a dummy interface
(left down, as netlink creates it) with each local IP as /32 or /128 (IPv6 ones ``nodad``); for each local IP twelve
rules that skip connection tracking for DNS to and from it (and for the health check port) and
accept it in the filter table. Rules are checked with ``-C`` and inserted at the top with
``-I`` (node-cache's EnsureRule with Prepend); teardown deletes each one until none is left.
Every call here blocks (it runs commands): the daemon calls these from a worker thread.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


class CommandError(Exception):
    """A networking command could not run or failed; the message says which and why."""


def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise CommandError(f"command not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"timed out: {' '.join(argv)}") from None


def _failure(p: subprocess.CompletedProcess[str]) -> CommandError:
    msg = (p.stderr or p.stdout).strip().replace("\n", "; ")
    return CommandError(f"{' '.join(p.args)}: {msg or f'exit status {p.returncode}'}")


def missing_tools(interface: bool, iptables: bool, ipv6: bool) -> list[str]:
    """Commands the enabled steps need and PATH lacks."""
    want = (["ip"] if interface else []) + ([iptables_cmd(ipv6)] if iptables else [])
    return [c for c in want if shutil.which(c) is None]


def iptables_cmd(ipv6: bool) -> str:
    return "ip6tables" if ipv6 else "iptables"


class Interface:
    """``ip link``/``ip addr`` on one named interface."""

    def __init__(self, name: str, ips: Sequence[str], ipv6: bool, runner: Runner = run) -> None:
        self.name = name
        self.prefixes = [f"{ip}/{128 if ipv6 else 32}" for ip in ips]
        # An IPv6 address stays tentative (unusable) on a down link unless added without DAD.
        self.addr_flags = ["nodad"] if ipv6 else []
        self.run = runner
        self.kind = "dummy"

    def exists(self) -> bool:
        p = self.run(["ip", "link", "show", "dev", self.name])
        if p.returncode == 0:
            return True
        if "does not exist" in p.stderr:
            return False
        raise _failure(p)

    def addresses(self) -> set[str]:
        p = self.run(["ip", "-o", "addr", "show", "dev", self.name])
        if p.returncode != 0:
            raise _failure(p)
        found = set()
        for line in p.stdout.splitlines():
            words = line.split()
            for i, w in enumerate(words[:-1]):
                if w in ("inet", "inet6"):
                    found.add(words[i + 1])
        return found

    def ensure(self) -> list[str]:
        """Create the interface or put back missing addresses; what was done, for the log."""
        if not self.exists():
            self._add_link()
            for prefix in self.prefixes:
                self._add_addr(prefix)
            return [f"Added interface - {self.name} ({self.kind})"]
        have = self.addresses()
        done = []
        for prefix in self.prefixes:
            if prefix not in have:
                self._add_addr(prefix)
                done.append(f"Added back address {prefix} to interface {self.name}")
        return done

    def _add_link(self) -> None:
        p = self.run(["ip", "link", "add", self.name, "type", "dummy"])
        if p.returncode != 0 and "Unknown device type" in p.stderr:
            # A kernel built without the dummy driver: an empty bridge holds addresses too.
            self.kind = "bridge"
            p = self.run(["ip", "link", "add", self.name, "type", "bridge"])
        if p.returncode != 0:
            raise _failure(p)

    def _add_addr(self, prefix: str) -> None:
        p = self.run(["ip", "addr", "add", prefix, "dev", self.name, *self.addr_flags])
        if p.returncode != 0 and "already assigned" not in p.stderr and "File exists" not in p.stderr:
            raise _failure(p)

    def remove(self) -> bool:
        """Delete the interface; False when there was none."""
        if not self.exists():
            return False
        p = self.run(["ip", "link", "del", self.name])
        if p.returncode != 0:
            raise _failure(p)
        return True


@dataclass(frozen=True)
class Rule:
    table: str
    chain: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"-t {self.table} {self.chain} {' '.join(self.args)}"


def node_cache_rules(local_ips: Sequence[str], port: int, health_port: int) -> list[Rule]:
    """node-cache's rule set (initIptables), in its order."""
    dns, health = str(port), str(health_port)
    rules: list[Rule] = []
    for ip in local_ips:
        def r(table: str, chain: str, proto: str, way: str, p: str, target: str,
              ip: str = ip) -> Rule:
            addr, port_opt = ("-d", "--dport") if way == "to" else ("-s", "--sport")
            return Rule(table, chain, ("-p", proto, addr, ip, port_opt, p, "-j", target))
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


class IPTables:
    """``iptables -C/-I/-D`` (``ip6tables`` for IPv6) with the xtables lock waited on."""

    def __init__(self, ipv6: bool, runner: Runner = run) -> None:
        self.cmd = iptables_cmd(ipv6)
        self.run = runner

    def _argv(self, op: str, rule: Rule) -> list[str]:
        return [self.cmd, "-w", "5", "-t", rule.table, op, rule.chain, *rule.args]

    def exists(self, rule: Rule) -> bool:
        p = self.run(self._argv("-C", rule))
        if p.returncode == 0:
            return True
        if p.returncode == 1 and "Bad rule" in (p.stderr + p.stdout):
            return False
        raise _failure(p)

    def ensure(self, rule: Rule) -> bool:
        """Insert the rule at the top of its chain unless present; True if it was there."""
        if self.exists(rule):
            return True
        p = self.run(self._argv("-I", rule))
        if p.returncode != 0:
            raise _failure(p)
        return False

    def delete(self, rule: Rule) -> int:
        """Delete every copy of the rule; how many were deleted."""
        n = 0
        while n < 100 and self.exists(rule):
            p = self.run(self._argv("-D", rule))
            if p.returncode != 0:
                raise _failure(p)
            n += 1
        return n


def is_lock_error(e: CommandError) -> bool:
    return "xtables lock" in str(e)
