"""node-cache's rule set and the ip/iptables command lines, against a scripted command runner.

The same code runs for real inside a network namespace in test_nodelocal_netns.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from linkdns.nodelocal.netif import (
    CommandError,
    Interface,
    IPTables,
    Rule,
    is_lock_error,
    node_cache_rules,
)


class Script:
    """Answers commands from a table of (argv prefix -> rc, stdout, stderr); records them."""

    def __init__(self, answers: dict[tuple[str, ...], list[tuple[int, str, str]]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        for prefix, outs in self.answers.items():
            if tuple(argv[: len(prefix)]) == prefix:
                rc, out, err = outs.pop(0) if len(outs) > 1 else outs[0]
                return subprocess.CompletedProcess(list(argv), rc, out, err)
        return subprocess.CompletedProcess(list(argv), 0, "", "")


def test_rule_set_is_node_cache_s() -> None:
    rules = node_cache_rules(["169.254.20.10"], 53, 8080)
    assert [str(r) for r in rules] == [
        "-t raw PREROUTING -p tcp -d 169.254.20.10 --dport 53 -j NOTRACK",
        "-t raw PREROUTING -p udp -d 169.254.20.10 --dport 53 -j NOTRACK",
        "-t filter INPUT -p tcp -d 169.254.20.10 --dport 53 -j ACCEPT",
        "-t filter INPUT -p udp -d 169.254.20.10 --dport 53 -j ACCEPT",
        "-t raw OUTPUT -p tcp -s 169.254.20.10 --sport 53 -j NOTRACK",
        "-t raw OUTPUT -p udp -s 169.254.20.10 --sport 53 -j NOTRACK",
        "-t filter OUTPUT -p tcp -s 169.254.20.10 --sport 53 -j ACCEPT",
        "-t filter OUTPUT -p udp -s 169.254.20.10 --sport 53 -j ACCEPT",
        "-t raw OUTPUT -p tcp -d 169.254.20.10 --dport 53 -j NOTRACK",
        "-t raw OUTPUT -p udp -d 169.254.20.10 --dport 53 -j NOTRACK",
        "-t raw OUTPUT -p tcp -d 169.254.20.10 --dport 8080 -j NOTRACK",
        "-t raw OUTPUT -p tcp -s 169.254.20.10 --sport 8080 -j NOTRACK",
    ]


def test_rule_set_per_ip_and_ports() -> None:
    rules = node_cache_rules(["169.254.20.10", "10.96.0.10"], 1053, 9090)
    assert len(rules) == 24
    assert rules[12].args[3] == "10.96.0.10"
    assert {r.args[5] for r in rules} == {"1053", "9090"}


def test_ensure_checks_then_inserts_at_the_top() -> None:
    run = Script({("iptables", "-w", "5", "-t", "raw", "-C"):
                  [(1, "", "iptables: Bad rule (does a matching rule exist in that chain?).")]})
    rule = Rule("raw", "PREROUTING", ("-p", "udp", "-d", "169.254.20.10", "--dport", "53",
                                      "-j", "NOTRACK"))
    assert IPTables(False, run).ensure(rule) is False
    assert run.calls == [
        ["iptables", "-w", "5", "-t", "raw", "-C", "PREROUTING", *rule.args],
        ["iptables", "-w", "5", "-t", "raw", "-I", "PREROUTING", *rule.args],
    ]


def test_ipv6_uses_ip6tables_and_128() -> None:
    run = Script({})
    IPTables(True, run).ensure(node_cache_rules(["fd00::10"], 53, 8080)[0])
    assert run.calls[0][0] == "ip6tables"
    run = Script({("ip", "link", "show"): [(1, "", 'Device "nodelocaldns" does not exist.')]})
    Interface("nodelocaldns", ["fd00::10"], True, run).ensure()
    assert run.calls[-1] == ["ip", "addr", "add", "fd00::10/128", "dev", "nodelocaldns", "nodad"]


def test_delete_removes_every_copy() -> None:
    run = Script({("iptables", "-w", "5", "-t", "filter", "-C"):
                  [(0, "", ""), (0, "", ""), (1, "", "iptables: Bad rule (does ...)")]})
    rule = node_cache_rules(["169.254.20.10"], 53, 8080)[2]
    assert IPTables(False, run).delete(rule) == 2
    assert [c[5] for c in run.calls] == ["-C", "-D", "-C", "-D", "-C"]


@pytest.mark.parametrize(
    ("rc", "err", "lock"),
    [
        pytest.param(4, "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: "
                     "Permission denied (you must be root)", False, id="permission"),
        pytest.param(4, "Another app is currently holding the xtables lock. Stopped waiting "
                     "after 5s.", True, id="xtables-lock"),
        pytest.param(1, "iptables: No chain/target/match by that name.", False, id="no-target"),
    ],
)
def test_iptables_failures_raise(rc: int, err: str, lock: bool) -> None:
    run = Script({("iptables",): [(rc, "", err)]})
    with pytest.raises(CommandError, match="iptables -w 5 -t raw -C PREROUTING") as e:
        IPTables(False, run).ensure(node_cache_rules(["169.254.20.10"], 53, 8080)[0])
    assert err in str(e.value)
    assert is_lock_error(e.value) is lock


def test_interface_created_with_addresses() -> None:
    run = Script({("ip", "link", "show"): [(1, "", 'Device "nodelocaldns" does not exist.')]})
    iface = Interface("nodelocaldns", ["169.254.20.10", "10.96.0.10"], False, run)
    assert iface.ensure() == ["Added interface - nodelocaldns (dummy)"]
    assert run.calls[1:] == [
        ["ip", "link", "add", "nodelocaldns", "type", "dummy"],
        ["ip", "addr", "add", "169.254.20.10/32", "dev", "nodelocaldns"],
        ["ip", "addr", "add", "10.96.0.10/32", "dev", "nodelocaldns"],
    ]


def test_interface_falls_back_to_bridge_without_the_dummy_driver() -> None:
    run = Script({("ip", "link", "show"): [(1, "", 'Device "nodelocaldns" does not exist.')],
                  ("ip", "link", "add", "nodelocaldns", "type", "dummy"):
                  [(2, "", "Error: Unknown device type.")]})
    iface = Interface("nodelocaldns", ["169.254.20.10"], False, run)
    assert iface.ensure() == ["Added interface - nodelocaldns (bridge)"]
    assert ["ip", "link", "add", "nodelocaldns", "type", "bridge"] in run.calls


def test_existing_interface_gets_missing_addresses_back() -> None:
    shown = ("2: nodelocaldns    inet 169.254.20.10/32 scope global nodelocaldns\\"
             "       valid_lft forever preferred_lft forever\n")
    run = Script({("ip", "-o", "addr", "show"): [(0, shown, "")]})
    iface = Interface("nodelocaldns", ["169.254.20.10", "10.96.0.10"], False, run)
    assert iface.ensure() == ["Added back address 10.96.0.10/32 to interface nodelocaldns"]
    assert run.calls[-1] == ["ip", "addr", "add", "10.96.0.10/32", "dev", "nodelocaldns"]


def test_interface_permission_denied_raises() -> None:
    run = Script({("ip", "link", "show"): [(1, "", 'Device "nodelocaldns" does not exist.')],
                  ("ip", "link", "add"): [(2, "", "RTNETLINK answers: Operation not permitted")]})
    with pytest.raises(CommandError, match="Operation not permitted"):
        Interface("nodelocaldns", ["169.254.20.10"], False, run).ensure()


def test_missing_command_is_a_command_error() -> None:
    from linkdns.nodelocal.netif import run

    with pytest.raises(CommandError, match="command not found: linkdns-no-such-command"):
        run(["linkdns-no-such-command"])
