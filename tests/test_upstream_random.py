"""Upstream query IDs and source ports are random (issue 11, deliverable 7), checked at the
upstream: no ID reused within its window (4096) and none within the test, no source port
reused within its window (the last 64 sockets), both spread over their range.

The thresholds are loose enough that a correct implementation fails them with a probability
below one in a million (Poisson tails); a counter, a fixed port or a short cycle fails them.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import pytest
from fakeupstream import FakeUpstream
from harness import Running
from test_forward import corefile

from linkdns.plugins.forward import transport as tr
from linkdns.plugins.forward import udp as fwd_udp

N = 600


def ask_many(up: FakeUpstream, n: int = N) -> tuple[list[int], list[int]]:
    """``n`` distinct names, one at a time (so sockets open in query order); the IDs and
    source ports the upstream saw, in arrival order."""
    with Running(corefile(up)) as srv:
        for i in range(n):
            assert srv.query(f"r{i}.test.").rcode() == 0
    return [q.id for q in up.queries], [p[1] for p in up.peers]


def buckets(values: list[int], lo: int, hi: int, k: int) -> list[int]:
    counts = Counter((v - lo) * k // (hi - lo + 1) for v in values)
    return [counts.get(i, 0) for i in range(k)]


def test_ids_never_repeat_within_the_window() -> None:
    """In-process, over 5 windows: any ID handed out again came at least ID_WINDOW later."""
    last: dict[int, int] = {}
    for i in range(5 * tr.ID_WINDOW):
        qid = tr.new_id()
        assert i - last.get(qid, -tr.ID_WINDOW) >= tr.ID_WINDOW
        last[qid] = i


def test_ids_seen_upstream_are_unique_and_spread(up: FakeUpstream) -> None:
    ids, _ = ask_many(up)
    assert len(ids) == N
    assert len(set(ids)) == N  # no ID reused (N is below the window)
    # Spread over 0..65535: 16 equal buckets, 37.5 expected in each.
    assert min(buckets(ids, 0, 0xFFFF, 16)) >= 12
    # Not a counter nor a short stride: neighbours are rarely close (expected 0.3 of N pairs).
    assert sum(abs(a - b) < 16 for a, b in pairwise(ids)) <= 3


def test_source_ports_not_reused_within_the_window_and_spread(
        up: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fwd_udp, "MAX_USES", 2)  # a fresh socket every second query
    _, ports = ask_many(up)
    # The sockets in the order they were opened: a port seen for a third time is a new socket.
    opened: list[int] = []
    uses: Counter[int] = Counter()
    for p in ports:
        if uses[p] % fwd_udp.MAX_USES == 0:
            opened.append(p)
        uses[p] += 1
    # (round robin over the pool: the last few sockets may have been used once only)
    assert N // fwd_udp.MAX_USES <= len(opened) <= N // fwd_udp.MAX_USES + fwd_udp.POOL_SIZE
    for i, p in enumerate(opened):
        assert p not in opened[max(0, i - fwd_udp.PORT_WINDOW) : i], (i, p)
    assert len(set(opened)) >= len(opened) - 10
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = (int(x) for x in f.read().split())
    assert all(lo <= p <= hi for p in opened)
    # Spread over the ephemeral range: 8 equal buckets, 37.5 expected in each.
    assert min(buckets(opened, lo, hi, 8)) >= 12
