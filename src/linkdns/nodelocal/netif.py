"""The interface holding the local IPs, via ``ip`` (the rules are in rules.py).

As node-cache's pkg/netif/netif.go: a dummy interface (left down, as netlink creates it) with
each local IP as /32 or /128 (IPv6 ones ``nodad``). Every call here blocks (it runs commands):
the daemon calls these from a thread.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


class CommandError(Exception):
    """A networking command could not run or failed; the message says which and why."""


class LinkAddError(CommandError):
    """The interface could not be created (node-cache counts it as ``interface_add``)."""


def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise CommandError(f"command not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"timed out: {' '.join(argv)}") from None


def failure(p: subprocess.CompletedProcess[str]) -> CommandError:
    msg = (p.stderr or p.stdout).strip().replace("\n", "; ")
    return CommandError(f"{' '.join(p.args)}: {msg or f'exit status {p.returncode}'}")


def missing_tools(want: Sequence[str]) -> list[str]:
    """The commands in ``want`` that PATH lacks."""
    return [c for c in want if shutil.which(c) is None]


class Interface:
    """``ip link``/``ip addr`` on one named interface."""

    def __init__(self, name: str, ips: Sequence[str], ipv6: bool, runner: Runner = run) -> None:
        self.name = name
        self.prefixes = [f"{ip}/{128 if ipv6 else 32}" for ip in ips]
        # An IPv6 address stays tentative (unusable) on a down link unless added without DAD.
        self.addr_flags = ["nodad"] if ipv6 else []
        self.run = runner
        self.kind = "dummy"
        #: what this process created (a failed start undoes only that): the link, addresses
        self.created = False
        self.added: set[str] = set()

    def exists(self) -> bool:
        p = self.run(["ip", "link", "show", "dev", self.name])
        if p.returncode == 0:
            return True
        if "does not exist" in p.stderr:
            return False
        raise failure(p)

    def addresses(self) -> set[str]:
        p = self.run(["ip", "-o", "addr", "show", "dev", self.name])
        if p.returncode != 0:
            raise failure(p)
        found = set()
        for line in p.stdout.splitlines():
            words = line.split()
            for i, w in enumerate(words[:-1]):
                if w in ("inet", "inet6"):
                    found.add(words[i + 1])
        return found

    def ensure(self) -> list[str]:
        """Create the interface or put back missing addresses; what was done, for the log."""
        if not self.exists() and self._add_link():
            for prefix in self.prefixes:
                self._add_addr(prefix)
            return [f"Added interface - {self.name} ({self.kind})"]
        have = self.addresses()
        done = []
        for prefix in self.prefixes:
            if prefix not in have and self._add_addr(prefix):
                done.append(f"Added back address {prefix} to interface {self.name}")
        return done

    def _add_link(self) -> bool:
        """Create the link; False if another process just did."""
        p = self.run(["ip", "link", "add", self.name, "type", "dummy"])
        if p.returncode != 0 and "Unknown device type" in p.stderr:
            # A kernel built without the dummy driver: an empty bridge holds addresses too.
            self.kind = "bridge"
            p = self.run(["ip", "link", "add", self.name, "type", "bridge"])
        if p.returncode != 0 and "File exists" in p.stderr:
            return False
        if p.returncode != 0:
            raise LinkAddError(str(failure(p)))
        self.created = True
        return True

    def _add_addr(self, prefix: str) -> bool:
        """Add an address; False if it was there already."""
        p = self.run(["ip", "addr", "add", prefix, "dev", self.name, *self.addr_flags])
        if p.returncode == 0:
            self.added.add(prefix)
            return True
        if "already assigned" in p.stderr or "File exists" in p.stderr:
            return False
        raise failure(p)

    def undo(self) -> list[str]:
        """Remove only what this process created (after a failed start); what was removed."""
        if self.created:
            return [f"Removed interface - {self.name}"] if self.remove() else []
        done = []
        for prefix in sorted(self.added):
            p = self.run(["ip", "addr", "del", prefix, "dev", self.name])
            if p.returncode == 0:
                done.append(f"Removed address {prefix} from interface {self.name}")
        return done

    def remove(self) -> bool:
        """Delete the interface; False when there was none."""
        if not self.exists():
            return False
        p = self.run(["ip", "link", "del", self.name])
        if p.returncode != 0:
            raise failure(p)
        return True
