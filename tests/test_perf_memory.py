"""Memory levers measured by bench/memory.py, pinned here so they are not lost.

- Entries of a cache without ``prefetch`` carry no popularity fields (``Popular`` does).
- Entries stored within one clock tick (1/64 s) share one ``stored`` float.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_cache_memory import fill, new_cache, pod_answer, scan

from linkdns.clock import Clock
from linkdns.plugins.cache import Cache, CacheConfig
from linkdns.plugins.cache.handler import STAMP_TICKS
from linkdns.plugins.cache.setup import ClassConfig
from linkdns.plugins.cache.store import Entry, Popular


def entries(c: Cache, pairs: list[tuple[bytes, bytes]]) -> list[Entry]:
    out = [c.store.get(scan(qw).key) for qw, _ in pairs]
    assert all(e is not None for e in out)
    return [e for e in out if e is not None]


def test_plain_entries_have_no_prefetch_fields_popular_ones_do() -> None:
    plain = new_cache()
    pairs = [pod_answer(i) for i in range(3)]
    fill(plain, pairs)
    e = entries(plain, pairs)[0]
    assert type(e) is Entry and not hasattr(e, "hits")
    pf = Cache(CacheConfig(success=ClassConfig(10, 3600), denial=ClassConfig(10, 1800),
                           prefetch=2), zones=["."], clock=Clock())
    fill(pf, pairs)
    p = entries(pf, pairs)[0]
    assert type(p) is Popular and p.hits == 0
    assert sys.getsizeof(p) == sys.getsizeof(e) + 16


class StillClock(Clock):
    """A clock that moves only when told to (real time passing while a loaded machine fills
    the cache must not move the stamps)."""

    __slots__ = ()

    def now(self) -> float:
        return 1000.0 + self.offset


def test_entries_stored_in_one_tick_share_their_stored_time() -> None:
    clock = StillClock()
    c = Cache(CacheConfig(success=ClassConfig(1000, 3600), denial=ClassConfig(1000, 1800)),
              zones=["."], clock=clock)
    clock.advance(1e-6)  # just inside a tick
    pairs = [pod_answer(i) for i in range(100)]
    fill(c, pairs)
    stamps = {id(e.stored) for e in entries(c, pairs)}
    assert len(stamps) == 1  # one tick: one float object
    assert entries(c, pairs)[0].stored == 1000.0  # floored to the tick
    clock.advance(1.0)
    more = [pod_answer(i) for i in range(100, 110)]
    fill(c, more)
    later = entries(c, more)[0].stored
    assert later - entries(c, pairs)[0].stored == pytest.approx(1.0, abs=1 / STAMP_TICKS)
    assert later is not entries(c, pairs)[0].stored
    # whole seconds still count exactly: the TTL of an entry one second old is one less
    e = entries(c, pairs)[0]
    assert c.ttl_for(e, clock.now()) == e.orig_ttl - 1


def test_dnslib_stays_out_of_a_daemon_that_never_needs_it() -> None:
    """Every built-in plugin loaded, no dnslib: it costs ~1 MiB of RSS and only truncation
    and template answers use it (imported on first use)."""
    code = ("import sys, linkdns.cli, linkdns.plugin; linkdns.plugin.load_builtin(); "
            "print('dnslib' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
