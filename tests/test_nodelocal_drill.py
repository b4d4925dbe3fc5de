"""Drill (c) of issue 12: node-local mode, a successor takes the sockets over, the old instance
gets SIGTERM -- in a network namespace the test creates (helpers in netns.py, the client and
its figures in drill.py). Afterwards the interface and every rule are there exactly once and
lookups through the local IPs keep working; stopping the last instance removes everything.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest
from drill import Load, SlowUpstream
from fakeupstream import FakeUpstream
from netns import (
    ENV,
    KUBE_DNS,
    LOCAL,
    Daemon,
    addresses,
    ask,
    config,
    enter,
    expected_rules,
    needed,
    ns,
    our_rules,
    upstream,
)

pytestmark = needed
__all__ = ["ns", "upstream"]  # fixtures

UPSTREAM_DELAY = 0.02  # as in test_handover.py: every miss is in flight this long


@pytest.fixture
def drill_up(ns: str) -> Iterator[SlowUpstream]:
    """The drill's upstream in a process of its own inside ``ns``: not a thread of this
    process, where the output readers, iptables-save runs and the GIL would delay answers
    the drill's client waits for (1 s, no retry)."""
    with SlowUpstream(UPSTREAM_DELAY, enter=lambda: enter(ns)) as up:
        yield up


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_drill_c_hand_over_keeps_the_node_setup_and_loses_nothing(
        ns: str, drill_up: SlowUpstream, tmp_path: Path, proto: str) -> None:
    args = ["-localip", f"{LOCAL},{KUBE_DNS}", *config(tmp_path, drill_up)]
    want = sorted(expected_rules(LOCAL) + expected_rules(KUBE_DNS))
    both = {f"{LOCAL}/32", f"{KUBE_DNS}/32"}
    old = Daemon(ns, *args, env=ENV)
    new: Daemon | None = None
    try:
        old.wait_for("[INFO] linkdns-")
        with Load(53, proto, rate=500, host=LOCAL, enter=lambda: enter(ns)) as load:
            time.sleep(1.0)
            launched = time.monotonic()
            new = Daemon(ns, *args, env=ENV)  # the same command line
            new.wait_for("hand-over: serving")
            serving = time.monotonic()
            new.wait_for("[INFO] linkdns-")
            old.wait_for("stopped reading")
            time.sleep(0.3)
            killed = time.monotonic()
            assert old.stop() == 0, old.out
            during = (our_rules(ns), addresses(ns))
            time.sleep(1.5)
        result = load.result
        print(f"\nnode-local {proto} SIGTERM after hand-over: {result}")
        if result.failed_at:  # when, from the successor's launch (the log is read late)
            print(f"  successor serving at +{serving - launched:.2f}s, signal at "
                  f"+{killed - launched:.2f}s, failures sent at "
                  f"{sorted(round(t - launched, 2) for t in result.failed_at)[:20]}")
        assert result.sent >= 1000, result  # ~2.8 s at 500/s (a loaded machine sends less)
        assert result.failed == 0, f"{result}\nold:\n{old.out}\nnew:\n{new.out}"
        assert "Leaving interface and rules in place: another instance is serving" in old.out
        assert "Tearing down" not in old.out
        assert "Adopted interface - nodelocaldns" in new.out
        assert "Adopted 24 nodelocaldns rules already in place" in new.out
        assert during == (want, both)
        assert our_rules(ns) == want and addresses(ns) == both  # exactly once
        for ip in (LOCAL, KUBE_DNS):
            for tcp in (False, True):
                assert ask(ns, ip, "after.example.", tcp).rcode() == dns.rcode.NOERROR
    finally:
        old.stop()
        if new is not None:
            assert new.stop() == 0, new.out
    assert "Tearing down" in new.out
    assert our_rules(ns) == [] and addresses(ns) is None


def test_hand_over_without_a_usable_lock_file_still_leaves_the_setup(
        ns: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    """No node lock to ask (a file where its directory should be): the old instance knows from
    the hand-over itself that a successor serves on the interface and rules."""
    (tmp_path / "file").write_text("")
    args = ["-localip", LOCAL, *config(tmp_path, upstream, lock=tmp_path / "file" / "x.lock")]
    old = Daemon(ns, *args, env=ENV)
    new: Daemon | None = None
    try:
        old.wait_for("[INFO] linkdns-")
        new = Daemon(ns, *args, env=ENV)
        new.wait_for("[INFO] linkdns-")
        assert "hand-over: took" in new.out and "acting as the only instance" in new.out
        assert old.stop() == 0, old.out
        assert "Leaving interface and rules in place: handed over to a successor" in old.out
        assert our_rules(ns) == expected_rules(LOCAL) and addresses(ns) == {f"{LOCAL}/32"}
        assert ask(ns, LOCAL, "after.example.").rcode() == dns.rcode.NOERROR
    finally:
        old.stop()
        if new is not None:
            assert new.stop() == 0, new.out
    assert our_rules(ns) == [] and addresses(ns) is None
