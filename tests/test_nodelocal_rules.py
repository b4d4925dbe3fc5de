"""node-cache's rule set and the ip/iptables/ebtables command lines, against a scripted runner.

The same code runs for real inside a network namespace in test_nodelocal_netns.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from linkdns.nodelocal.netif import CommandError, Interface
from linkdns.nodelocal.rules import (
    ALLOW_TRAFFIC,
    SKIP_CONNTRACK,
    EBTables,
    Found,
    IPTables,
    broute_rules,
    is_lock_error,
    node_cache_rules,
)

SKIP = f'-m comment --comment "{SKIP_CONNTRACK}"'
ALLOW = f'-m comment --comment "{ALLOW_TRAFFIC}"'
BAD_RULE = (1, "", "iptables: Bad rule (does a matching rule exist in that chain?).")


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
    """cache_app.go's initIptables, comments included (-j before -m comment, as there)."""
    rules = node_cache_rules(["169.254.20.10"], 53, 8080)
    assert [str(r) for r in rules] == [
        f"-t raw PREROUTING -p tcp -d 169.254.20.10 --dport 53 -j NOTRACK {SKIP}",
        f"-t raw PREROUTING -p udp -d 169.254.20.10 --dport 53 -j NOTRACK {SKIP}",
        f"-t filter INPUT -p tcp -d 169.254.20.10 --dport 53 -j ACCEPT {ALLOW}",
        f"-t filter INPUT -p udp -d 169.254.20.10 --dport 53 -j ACCEPT {ALLOW}",
        f"-t raw OUTPUT -p tcp -s 169.254.20.10 --sport 53 -j NOTRACK {SKIP}",
        f"-t raw OUTPUT -p udp -s 169.254.20.10 --sport 53 -j NOTRACK {SKIP}",
        f"-t filter OUTPUT -p tcp -s 169.254.20.10 --sport 53 -j ACCEPT {ALLOW}",
        f"-t filter OUTPUT -p udp -s 169.254.20.10 --sport 53 -j ACCEPT {ALLOW}",
        f"-t raw OUTPUT -p tcp -d 169.254.20.10 --dport 53 -j NOTRACK {SKIP}",
        f"-t raw OUTPUT -p udp -d 169.254.20.10 --dport 53 -j NOTRACK {SKIP}",
        f"-t raw OUTPUT -p tcp -d 169.254.20.10 --dport 8080 -j NOTRACK {SKIP}",
        f"-t raw OUTPUT -p tcp -s 169.254.20.10 --sport 8080 -j NOTRACK {SKIP}",
    ]
    assert rules[0].forms == (
        ("-p", "tcp", "-d", "169.254.20.10", "--dport", "53", "-j", "NOTRACK",
         "-m", "comment", "--comment", SKIP_CONNTRACK),
        ("-p", "tcp", "-d", "169.254.20.10", "--dport", "53", "-j", "NOTRACK"),
    )


def test_rule_set_per_ip_and_ports() -> None:
    rules = node_cache_rules(["169.254.20.10", "10.96.0.10"], 1053, 9090)
    assert len(rules) == 24
    assert rules[12].args[3] == "10.96.0.10"
    assert {r.args[5] for r in rules} == {"1053", "9090"}


def test_ensure_checks_both_forms_then_inserts_the_current_one_at_the_top() -> None:
    run = Script({("iptables", "-w", "5", "-t", "raw", "-C"): [BAD_RULE]})
    rule = node_cache_rules(["169.254.20.10"], 53, 8080)[1]
    assert IPTables(False, run).ensure(rule) is Found.ADDED
    current, older = rule.forms
    assert run.calls == [
        ["iptables", "-w", "5", "-t", "raw", "-C", "PREROUTING", *current],
        ["iptables", "-w", "5", "-t", "raw", "-C", "PREROUTING", *older],
        ["iptables", "-w", "5", "-t", "raw", "-I", "PREROUTING", *current],
    ]


def test_ensure_adopts_the_older_form_without_adding() -> None:
    run = Script({("iptables", "-w", "5", "-t", "raw", "-C"): [BAD_RULE, (0, "", "")]})
    rule = node_cache_rules(["169.254.20.10"], 53, 8080)[0]
    assert IPTables(False, run).ensure(rule) is Found.OLDER
    assert [c[5] for c in run.calls] == ["-C", "-C"]


def test_ensure_finds_the_current_form_in_one_command() -> None:
    run = Script({})
    assert IPTables(False, run).ensure(node_cache_rules(["169.254.20.10"], 53, 8080)[0]) \
        is Found.PRESENT
    assert len(run.calls) == 1


def test_ipv6_uses_ip6tables_and_128() -> None:
    run = Script({})
    IPTables(True, run).ensure(node_cache_rules(["fd00::10"], 53, 8080)[0])
    assert run.calls[0][0] == "ip6tables"
    run = Script({("ip", "link", "show"): [(1, "", 'Device "nodelocaldns" does not exist.')]})
    Interface("nodelocaldns", ["fd00::10"], True, run).ensure()
    assert run.calls[-1] == ["ip", "addr", "add", "fd00::10/128", "dev", "nodelocaldns", "nodad"]


def test_delete_removes_every_copy_of_both_forms() -> None:
    run = Script({("iptables", "-w", "5", "-t", "filter", "-D"):
                  [(0, "", ""), (0, "", ""), BAD_RULE, (0, "", ""), BAD_RULE]})
    rule = node_cache_rules(["169.254.20.10"], 53, 8080)[2]
    assert IPTables(False, run).delete(rule) == 3
    assert [len(c) for c in run.calls] == [19, 19, 19, 15, 15]  # 2 current, 1 older


def test_broute_rule_is_node_cache_s() -> None:
    assert [str(r) for r in broute_rules(["169.254.20.10", "10.96.0.10"], False)] == [
        "-t broute BROUTING -p IPv4 --ip-dst 169.254.20.10 -j redirect",
        "-t broute BROUTING -p IPv4 --ip-dst 10.96.0.10 -j redirect",
    ]
    assert str(broute_rules(["fd00::10"], True)[0]) == \
        "-t broute BROUTING -p IPv6 --ip6-dst fd00::10 -j redirect"


def test_ebtables_lists_then_appends_and_deletes_every_copy() -> None:
    listed = "Bridge table: broute\n\nBridge chain: BROUTING, entries: 1, policy: ACCEPT\n" \
        "-p IPv4 --ip-dst 169.254.20.10 -j redirect --redirect-target ACCEPT\n"
    rule = broute_rules(["169.254.20.10"], False)[0]
    run = Script({("ebtables", "-t", "broute", "-L"): [(0, listed.split("-p")[0], "")]})
    assert EBTables(run).ensure(rule) is Found.ADDED
    assert run.calls == [["ebtables", "-t", "broute", "-L", "BROUTING", "--Lmac2"],
                         ["ebtables", "-t", "broute", "-A", "BROUTING", *rule.args]]
    run = Script({("ebtables", "-t", "broute", "-L"): [(0, listed + listed.splitlines()[-1], "")]})
    assert EBTables(run).ensure(rule) is Found.PRESENT
    assert EBTables(run).delete(rule) == 2
    assert run.calls[-1] == ["ebtables", "-t", "broute", "-D", "BROUTING", *rule.args]


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


def test_interface_created_by_another_process_meanwhile_is_not_ours() -> None:
    run = Script({("ip", "link", "show"): [(1, "", 'Device "nodelocaldns" does not exist.')],
                  ("ip", "link", "add"): [(2, "", "RTNETLINK answers: File exists")],
                  ("ip", "addr", "add"): [(2, "", "RTNETLINK answers: File exists")]})
    iface = Interface("nodelocaldns", ["169.254.20.10"], False, run)
    assert iface.ensure() == []
    assert (iface.created, iface.added, iface.undo()) == (False, set(), [])


def test_undo_removes_only_the_addresses_this_process_added() -> None:
    shown = "2: nodelocaldns    inet 169.254.20.10/32 scope global nodelocaldns\n"
    run = Script({("ip", "-o", "addr", "show"): [(0, shown, "")]})
    iface = Interface("nodelocaldns", ["169.254.20.10", "10.96.0.10"], False, run)
    iface.ensure()
    assert iface.undo() == ["Removed address 10.96.0.10/32 from interface nodelocaldns"]
    assert run.calls[-1] == ["ip", "addr", "del", "10.96.0.10/32", "dev", "nodelocaldns"]
    assert ["ip", "link", "del", "nodelocaldns"] not in run.calls


def test_missing_command_is_a_command_error() -> None:
    from linkdns.nodelocal.netif import run

    with pytest.raises(CommandError, match="command not found: linkdns-no-such-command"):
        run(["linkdns-no-such-command"])
