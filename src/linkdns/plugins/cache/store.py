"""Cache entries (shared header + the records) and the bounded store.

Memory is the point of this layout: a node-local cache holds tens of thousands of entries, and
every field or object an entry owns is paid that many times (``tests/test_cache_memory.py``
pins it). An :class:`Entry` owns one bytes object, ``rest``: the reply's records (answer,
authority, additional; without the OPT), their TTL fields already set to ``tpl_ttl``. A hit
builds the reply from the client's own datagram, which already holds the ID and the question
in the client's letter case:

    query[:2]                                         the client's ID
    + head.variants[...]                              our flags and counts (bytes 2-11)
    + query[12:end of question]                       the question, as the client wrote it
    + rest (+ the OPT for an EDNS client)

so no copy of the header or the question is kept per entry (the cache key already holds the
lowercased question). The rest is rewritten when the remaining TTL changes, at most once per
second while the entry is being hit; all records carry the same TTL (CoreDNS), so the
original per-record TTLs are not kept.

Entries share what repeats, in bounded interning tables: the :class:`Head` (header bytes 2-11
as the cache answers: QR, AA per policy, RD | RA, CD, AD rule, rcode, counts; the entry's
class; the upstream's AD bit), the TTL offsets of one reply shape (a tuple, relative to
``rest``) and TTL values above 256. Only a cache with ``prefetch`` stores :class:`Popular`
entries, which also count their hits; their never-hit time is one shared float. The
``refreshing`` mark lives in a set of the (few) entries with a refresh in flight.

The :class:`Store` holds one index (key -> entry, what the hit path looks up) and, per class
(success, denial), a ring of keys that bounds the class to its capacity. Eviction is CLOCK
("second chance"), an approximation of LRU: a hit only sets ``used``; when a class is full
the hand sweeps its ring, clears ``used`` on the entries it passes and evicts the first one
that was not used since the hand last passed it. A removed (replaced, expired) entry frees
its slot for the next entry of its class.
"""

from __future__ import annotations

import math

SUCCESS = 0  # kind: NOERROR with answers / delegation / empty NOERROR
DENIAL = 1  # kind: NXDOMAIN or NODATA with an SOA
SERVFAIL = 2  # kind: SERVFAIL / NOTIMP (kept in the denial class, as CoreDNS does)

CLASS_NAMES = ("success", "denial")

HEADER_LEN = 12
_NEVER = -math.inf  # shared "never hit" prefetch time

#: bounds of the interning tables (headers, TTL-offset shapes, TTL values > 256)
HEADS_MAX = 4096
SHAPES_MAX = 4096
INTS_MAX = 8192
_heads: dict[tuple[bytes, int, bool], Head] = {}
_shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
_ints: dict[int, int] = {}
#: slot numbers, shared by every ring (ints above 256 are objects of their own)
_slots: dict[int, int] = {}
#: entries with a refresh in flight (see :attr:`Entry.refreshing`)
_refreshing: set[Entry] = set()


def share_int(v: int) -> int:
    """``v``, as an object shared with every other holder of the same value (up to a bound)."""
    if v <= 256:
        return v  # CPython caches these already
    s = _ints.get(v)
    if s is not None:
        return s
    if len(_ints) < INTS_MAX:
        _ints[v] = v
    return v


def share_shape(offsets: tuple[int, ...]) -> tuple[int, ...]:
    """The interned copy of a TTL-offset tuple (one per reply shape, up to a bound)."""
    s = _shapes.get(offsets)
    if s is not None:
        return s
    if len(_shapes) < SHAPES_MAX:
        _shapes[offsets] = offsets = tuple(share_int(o) for o in offsets)
    return offsets


class Head:
    """What the entries of one header shape share (never mutated once built).

    ``plain``/``edns``: header bytes 2-11 as the cache answers a client with RD (without /
    with our OPT counted in ARCOUNT); ``variants``: the same for every client flag that
    changes them, indexed ``4 * edns | client AD << 1 | client RD`` (RD echoed; AD set when
    the client asked with AD and the upstream's answer had it), so a hit picks its header
    bytes with one index and patches nothing; ``cls``: the entry class; ``ad``: the
    upstream's AD bit.
    """

    __slots__ = ("ad", "cls", "edns", "plain", "variants")

    def __init__(self, hdr: bytes, cls: int, ad: bool) -> None:
        self.plain = plain = bytes(hdr)
        ar = ((hdr[8] << 8) | hdr[9]) + 1
        self.edns = edns = hdr[:8] + bytes((ar >> 8 & 0xFF, ar & 0xFF))
        self.variants = tuple(
            bytes((base[0] if i & 1 else base[0] & 0xFE,
                   base[1] | 0x20 if i & 2 and ad else base[1])) + base[2:]
            for base in (plain, edns) for i in range(4))
        self.cls = cls
        self.ad = ad


def share_head(hdr: bytes, cls: int, ad: bool) -> Head:
    """The interned :class:`Head` for these header bytes 2-11, class and AD bit."""
    k = (hdr, cls, ad)
    h = _heads.get(k)
    if h is None:
        h = Head(hdr, cls, ad)
        if len(_heads) < HEADS_MAX:
            _heads[k] = h
    return h


def _slot(i: int) -> int:
    """``i`` as the object every ring uses for slot ``i`` (setdefault: atomic under the GIL)."""
    return _slots.setdefault(i, i)


def name_end(data: bytes | bytearray) -> int:
    """The offset just past the (uncompressed) question name of ``data``, a reply walked
    already: a speed copy of ``wire.skip_name`` without its bounds (a call and three tests
    less per label on every store; tests/test_name_walkers.py pins it)."""
    end = HEADER_LEN
    while data[end]:
        end += data[end] + 1
    return end + 1


class Entry:
    """One stored reply. Immutable except ``rest``'s TTLs, popularity and eviction state.

    Built from ``data``: the reply without OPT (any ID and question case), ``offsets``: its
    TTL field offsets, ``stored``: clock seconds, ``ttl``: the clamped TTL (seconds, > 0),
    ``kind``, and the flags the cache answers with (``aa`` per policy, the upstream's ``ad``,
    and the stored query's ``cd``/``do``).
    """

    __slots__ = ("head", "offsets", "orig_ttl", "rest", "slot", "stored", "tpl_ttl", "used")

    def __init__(self, data: bytes, offsets: tuple[int, ...], stored: float, ttl: int,
                 kind: int, aa: bool, ad: bool, cd: bool, do: bool) -> None:
        q_end = name_end(data) + 4
        hdr = bytes((
            0x80 | (0x04 if aa else 0) | 0x01,  # QR, AA, RD (cleared for a client without)
            0x80 | (0x10 if cd else 0) | (0x20 if ad and do else 0) | (data[3] & 0x0F),
        )) + data[4:HEADER_LEN]
        self.head = share_head(hdr, SUCCESS if kind == SUCCESS else DENIAL, ad)
        self.offsets = share_shape(  # (one record: no generator to run)
            (offsets[0] - q_end,) if len(offsets) == 1 else tuple([o - q_end for o in offsets]))
        self.stored = stored  # clock seconds when stored
        self.orig_ttl = ttl = share_int(ttl)  # clamped TTL (seconds, > 0)
        self.used = False  # CLOCK reference bit
        self.slot = 0  # position in its class's ring (set by the store)
        self.rest = data[q_end:]
        self.tpl_ttl = -1
        self.set_ttl(ttl)

    @property
    def cls(self) -> int:
        return self.head.cls

    @property
    def rcode(self) -> int:
        return self.head.plain[1] & 0x0F

    @property
    def aa(self) -> bool:
        return bool(self.head.plain[0] & 0x04)

    @property
    def ad(self) -> bool:
        """The upstream's AD bit."""
        return self.head.ad

    @property
    def kind(self) -> int:
        if self.cls == SUCCESS:
            return SUCCESS
        return SERVFAIL if self.rcode in (2, 4) else DENIAL

    @property
    def refreshing(self) -> bool:
        """A background refresh of this entry is in flight (at most one at a time)."""
        return self in _refreshing

    @refreshing.setter
    def refreshing(self, on: bool) -> None:
        if on:
            _refreshing.add(self)
        else:
            _refreshing.discard(self)

    def remaining(self, now: float) -> int:
        """Seconds left (CoreDNS: original TTL minus whole seconds elapsed); <= 0 = expired."""
        return self.orig_ttl - int(now - self.stored)

    def set_ttl(self, ttl: int) -> None:
        """Rewrite the TTL fields in ``rest`` to ``ttl`` (every record carries the same TTL)."""
        if self.offsets:
            buf = bytearray(self.rest)
            tb = bytearray(ttl.to_bytes(4, "big"))  # (a bytes value would be copied per slice)
            for o in self.offsets:
                buf[o : o + 4] = tb
            self.rest = bytes(buf)
        self.tpl_ttl = share_int(ttl)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {CLASS_NAMES[self.cls]} kind={self.kind} ttl={self.orig_ttl} "
                f"rrs={len(self.offsets)} {len(self.rest)}B>")


class Popular(Entry):
    """An entry of a cache with ``prefetch``: also its popularity (CoreDNS's freq.Freq).

    Only such caches pay for the two fields (16 bytes per entry, ~1.2 MiB over the four
    full NodeLocal caches)."""

    __slots__ = ("hits", "last")

    def __init__(self, data: bytes, offsets: tuple[int, ...], stored: float, ttl: int,
                 kind: int, aa: bool, ad: bool, cd: bool, do: bool) -> None:
        super().__init__(data, offsets, stored, ttl, kind, aa, ad, cd, do)
        self.hits = 0  # hits in the current window
        self.last = _NEVER  # clock seconds of the last hit


class Store:
    """Entries by key, each class bounded by its capacity (0 = that class is off)."""

    __slots__ = ("caps", "evictions", "free", "hands", "index", "rings")

    def __init__(self, success_cap: int, denial_cap: int) -> None:
        self.index: dict[bytes, Entry] = {}
        self.caps = (success_cap, denial_cap)
        #: per class: the key in each slot (None = free), the free slots, the CLOCK hand
        self.rings: tuple[list[bytes | None], list[bytes | None]] = ([], [])
        self.free: tuple[list[int], list[int]] = ([], [])
        self.hands = [0, 0]
        self.evictions = [0, 0]

    def __len__(self) -> int:
        return len(self.index)

    def get(self, key: bytes) -> Entry | None:
        return self.index.get(key)

    def items(self) -> list[tuple[bytes, Entry]]:
        """Every (key, entry), in the order they were stored (a copy: a snapshot reads it)."""
        return list(self.index.items())

    def put(self, key: bytes, e: Entry) -> bool:
        """Store ``e`` under ``key`` (replacing any entry of either class). False if the class
        has no room at all (capacity 0)."""
        cls = e.cls
        cap = self.caps[cls]
        if cap <= 0:
            return False
        self.remove(key)
        ring = self.rings[cls]
        free = self.free[cls]
        if free:  # a hole, anywhere on the ring: one pass of grace, as if at the back
            slot = free.pop()
            e.used = True
        elif len(ring) < cap:
            slot = _slot(len(ring))
            ring.append(None)
        else:
            slot = self._evict(cls)
        ring[slot] = key
        e.slot = slot
        self.index[key] = e
        return True

    def remove(self, key: bytes, only: Entry | None = None) -> None:
        """Forget ``key`` (if ``only`` is given, only when it still maps to that entry)."""
        old = self.index.get(key)
        if old is None or (only is not None and old is not only):
            return
        del self.index[key]
        self.rings[old.cls][old.slot] = None
        self.free[old.cls].append(old.slot)

    def _evict(self, cls: int) -> int:
        """Evict one entry of a full class (no free slot); its slot."""
        ring = self.rings[cls]
        index = self.index
        h = self.hands[cls]
        n = len(ring)
        while True:
            if h >= n:
                h = 0
            key = ring[h]
            assert key is not None  # a full ring has no free slot
            e = index[key]
            if e.used:  # second chance
                e.used = False
                h += 1
                continue
            del index[key]
            self.evictions[cls] += 1
            self.hands[cls] = h + 1
            return _slot(h)

    def sizes(self) -> tuple[int, int]:
        r, f = self.rings, self.free
        return len(r[0]) - len(f[0]), len(r[1]) - len(f[1])
