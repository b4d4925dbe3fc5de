"""Cache entries (immutable reply bytes + where the TTLs are) and the bounded store.

An :class:`Entry` is built once, when a reply is stored: the reply without its OPT, with ID 0
and the lowercased question, the offsets of every record's TTL field, the store time (absolute
clock seconds) and the clamped TTL. It also keeps a *template*: the same bytes with the TTL
fields and the base flags already written for the current remaining TTL, rebuilt at most once
per second, so a hit copies it and patches only ID, question, RD/AD and the OPT.

The :class:`Store` holds one index (key -> entry, what the hit path looks up) and one
insertion-ordered map per class (success, denial) that bounds each class to its capacity.
Eviction is CLOCK ("second chance"), an approximation of LRU: a hit only sets ``used``; when a
class is full the oldest entry is evicted unless it was used since it was last examined, in
which case it is moved to the back with ``used`` cleared.
"""

from __future__ import annotations

import math
from collections import OrderedDict

SUCCESS = 0  # kind: NOERROR with answers / delegation / empty NOERROR
DENIAL = 1  # kind: NXDOMAIN or NODATA with an SOA
SERVFAIL = 2  # kind: SERVFAIL / NOTIMP (kept in the denial class, as CoreDNS does)

CLASS_NAMES = ("success", "denial")


class Entry:
    """One stored reply. Immutable except the template, popularity and refresh state."""

    __slots__ = (
        "ad", "ar1", "cls", "data", "f_hi", "f_lo", "f_lo_ad", "hits", "kind", "last", "offsets",
        "opt", "opt_size", "orig_ttl", "question", "rcode", "refreshing", "slices", "stored",
        "threshold", "tpl", "tpl_opt", "tpl_ttl", "used",
    )

    def __init__(self, data: bytes, offsets: tuple[int, ...], stored: float, ttl: int,
                 kind: int, aa: bool, ad: bool, cd: bool, do: bool, percentage: int = 10) -> None:
        self.data = data  # reply without OPT, ID 0, lowercased question
        self.offsets = offsets  # TTL field offsets
        self.slices = tuple(slice(o, o + 4) for o in offsets)
        self.stored = stored  # clock seconds when stored
        self.orig_ttl = ttl  # clamped TTL (seconds, > 0)
        self.kind = kind
        self.cls = SUCCESS if kind == SUCCESS else DENIAL
        self.rcode = data[3] & 0x0F
        self.ad = ad  # the upstream's AD bit
        # Header bytes 2 and 3 as the cache answers: QR, AA per policy | RA, CD, AD rule, rcode.
        self.f_hi = 0x80 | (0x04 if aa else 0)
        lo = 0x80 | (0x10 if cd else 0) | self.rcode
        self.f_lo = lo | (0x20 if ad and do else 0)  # client without AD
        self.f_lo_ad = lo | (0x20 if ad else 0)  # client set AD
        ar = ((data[10] << 8) | data[11]) + 1
        self.ar1 = bytes((ar >> 8 & 0xFF, ar & 0xFF))  # ARCOUNT with our OPT appended
        self.threshold = math.ceil(percentage / 100 * ttl)  # prefetch below this TTL
        q_end = 12
        while data[q_end]:
            q_end += data[q_end] + 1
        self.question = data[12 : q_end + 5]  # lowercase name, type, class
        self.tpl = b""
        self.tpl_ttl = -1
        #: the template with the OPT of the last client size seen (no cookie) appended
        self.tpl_opt = b""
        self.opt = b""
        self.opt_size = -1
        self.hits = 0  # prefetch popularity (CoreDNS freq.Freq)
        self.last = -math.inf
        self.refreshing = False
        self.used = False
        self.set_ttl(ttl)

    @property
    def aa(self) -> bool:
        return bool(self.f_hi & 0x04)

    def remaining(self, now: float) -> int:
        """Seconds left (CoreDNS: original TTL minus whole seconds elapsed); <= 0 = expired."""
        return self.orig_ttl - int(now - self.stored)

    def set_ttl(self, ttl: int) -> None:
        """Rebuild the template for ``ttl`` (every record carries the same TTL)."""
        buf = bytearray(self.data)
        tb = ttl.to_bytes(4, "big")
        for s in self.slices:
            buf[s] = tb
        buf[2] = self.f_hi
        buf[3] = self.f_lo
        self.tpl = bytes(buf)
        self.tpl_ttl = ttl
        if self.opt_size >= 0:
            self.tpl_opt = self.tpl[:10] + self.ar1 + self.tpl[12:] + self.opt

    def set_opt(self, size: int, opt: bytes) -> None:
        """Cache the template with this OPT appended (clients of one kind send one size)."""
        self.opt_size = size
        self.opt = opt
        self.tpl_opt = self.tpl[:10] + self.ar1 + self.tpl[12:] + opt

    def __repr__(self) -> str:
        return (f"<Entry {CLASS_NAMES[self.cls]} kind={self.kind} ttl={self.orig_ttl} "
                f"rrs={len(self.offsets)} {len(self.data)}B>")


class Store:
    """Entries by key, each class bounded by its capacity (0 = that class is off)."""

    __slots__ = ("caps", "classes", "evictions", "index")

    def __init__(self, success_cap: int, denial_cap: int) -> None:
        self.index: dict[bytes, Entry] = {}
        self.classes: tuple[OrderedDict[bytes, Entry], OrderedDict[bytes, Entry]] = (
            OrderedDict(), OrderedDict())
        self.caps = (success_cap, denial_cap)
        self.evictions = [0, 0]

    def __len__(self) -> int:
        return len(self.index)

    def get(self, key: bytes) -> Entry | None:
        return self.index.get(key)

    def accepts(self, cls: int) -> bool:
        return self.caps[cls] > 0

    def put(self, key: bytes, e: Entry) -> bool:
        """Store ``e`` under ``key`` (replacing any entry of either class). False if the class
        has no room at all (capacity 0)."""
        cap = self.caps[e.cls]
        if cap <= 0:
            return False
        self.remove(key)
        d = self.classes[e.cls]
        while len(d) >= cap:
            self._evict(e.cls)
        d[key] = e
        self.index[key] = e
        return True

    def remove(self, key: bytes, only: Entry | None = None) -> None:
        """Forget ``key`` (if ``only`` is given, only when it still maps to that entry)."""
        old = self.index.get(key)
        if old is None or (only is not None and old is not only):
            return
        del self.index[key]
        del self.classes[old.cls][key]

    def _evict(self, cls: int) -> None:
        d = self.classes[cls]
        while True:
            key, e = d.popitem(last=False)
            if e.used:  # second chance
                e.used = False
                d[key] = e
                continue
            del self.index[key]
            self.evictions[cls] += 1
            return

    def sizes(self) -> tuple[int, int]:
        return len(self.classes[0]), len(self.classes[1])
