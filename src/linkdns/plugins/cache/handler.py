"""The cache handler: the synchronous hit path, the slow path, and background refreshes.

Hit path (``hit_wire``, called by the listener without a task, with the key it read from the
datagram in place): one dict lookup, then one join of the client's ID, the entry's shared
header bytes for the client's RD/AD bits, the client's question (its letter case), the
entry's records (TTLs already written) and the OPT. dnslib and prometheus are never touched.

Slow path (``serve``): zone check, lookup (fresh hit, stale entry, miss). Misses run the rest
of the chain with a Recorder; identical misses in flight share that one exchange. A stored
reply is answered from its entry, so the first answer and later hits carry the same TTLs and
flags; a reply that is not stored passes through with the AA policy and the AD rule applied.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Any

from linkdns import wire
from linkdns.clock import Clock
from linkdns.flight import Flights
from linkdns.plugin import Handler
from linkdns.plugins.cache import policy
from linkdns.plugins.cache.background import Background, detached
from linkdns.plugins.cache.policy import assemble, client_opt
from linkdns.plugins.cache.setup import CacheConfig
from linkdns.plugins.cache.snapshot import Snapshot
from linkdns.plugins.cache.store import DENIAL, SERVFAIL, SUCCESS, Entry, Popular, Store
from linkdns.request import Request
from linkdns.wire import Query
from linkdns.writer import Recorder, Writer
from linkdns.zones import ZoneSet

if TYPE_CHECKING:
    from linkdns.plugin import Env


#: serve_stale verify: how long the client waits for the upstream before it gets the stale
#: answer (RFC 8767 §5 suggests a 1.8 s client response timer). Tests lower it.
VERIFY_TIMEOUT = 1.8
#: the peer a refresh that started on the hit path reports (no client address there)
REFRESH_PEER = ("0.0.0.0", 0)

_monotonic = time.monotonic
#: entries record when they were stored in ticks of 1/STAMP_TICKS s (see Cache._stamp)
STAMP_TICKS = 64

class Outcome:
    """What one exchange through the rest of the chain produced (shared by waiters)."""

    __slots__ = ("entry", "error", "plugin", "rc", "reply")

    def __init__(self, rc: int, reply: bytes | None = None, plugin: str = "",
                 entry: Entry | None = None, error: Any = None) -> None:
        self.rc = rc
        self.reply = reply
        self.plugin = plugin
        self.entry = entry
        self.error = error


_FAILED = Outcome(wire.SERVFAIL)



class Cache(Handler):
    name = "cache"

    def __init__(self, cfg: CacheConfig, env: Env | None = None,
                 zones: list[str] | None = None, clock: Clock | None = None) -> None:
        """``zones``/``clock`` default to the site's (unit tests pass them without a site)."""
        super().__init__()
        self.cfg = cfg
        self.env = env
        self.zones = cfg.zones or zones or (env.zones if env is not None else ["."])
        self._zone_set = ZoneSet(self.zones)
        site_zones = env.zones if env is not None else self.zones
        #: True when every name routed to this site is in the cache's zones (no check needed)
        self._all = all(self._zone_set.covers_name(z) for z in site_zones)
        self.store = Store(cfg.success.cap, cfg.denial.cap)
        self._index = self.store.index
        self._clock = clock or (env.clock if env is not None else None)
        #: the stock Clock is read inline on the hit path (monotonic + offset, no call frame)
        self._stock_clock = type(self._clock) is Clock
        self._keepttl = cfg.keepttl
        self._pf = cfg.prefetch
        self._pf_window = cfg.prefetch_window
        self._pf_pct = cfg.prefetch_percentage
        self._stale = cfg.stale
        self._aa = cfg.aa
        self._off_success = ZoneSet(cfg.disable_success) if cfg.disable_success else None
        self._off_denial = ZoneSet(cfg.disable_denial) if cfg.disable_denial else None
        #: keys being fetched -> futures of the callers waiting on that fetch
        self._flights: Flights[bytes, Outcome] = Flights()
        #: refreshes and the stale answer's verify exchange, as tasks (background.py)
        self.background = Background(env, self.fetch)
        self._last_stamp = -math.inf
        # Counters (read by the prometheus collector at scrape time).
        self.hits = [0, 0]  # success, denial
        self.misses = 0
        self.prefetches = 0
        self.drops = 0
        self.served_stale = 0
        #: ``snapshot FILE``: saves the entries at stop, loads them at start (snapshot.py)
        self.snapshot = Snapshot(self, cfg.snapshot) if cfg.snapshot else None

    # -- helpers ----------------------------------------------------------------------------

    def now(self) -> float:
        clk = self._clock
        if clk is None:
            raise RuntimeError("cache has no clock")
        if self._stock_clock:  # Clock.now, inlined (a miss reads the clock twice)
            return _monotonic() + clk.offset
        return clk.now()

    def _stamp(self) -> float:
        """The time an entry stored now records: the clock at STAMP_RESOLUTION, one float
        object shared by every entry stored within the same tick (24 bytes saved per entry
        in a burst of misses). TTLs are whole seconds: an entry's TTL just ticks down up to
        1/64 s early."""
        t = math.floor(self.now() * STAMP_TICKS) / STAMP_TICKS
        if t != self._last_stamp:
            self._last_stamp = t
        return self._last_stamp

    @property
    def requests(self) -> int:
        return self.hits[0] + self.hits[1] + self.misses

    def ttl_for(self, e: Entry, now: float) -> int:
        """The TTL an answer from ``e`` carries now (0 once expired: a stale answer)."""
        if self._keepttl:
            return e.orig_ttl
        ttl = e.remaining(now)
        return ttl if ttl > 0 else 0

    def covers(self, q: Query) -> bool:
        return self._all or self._zone_set.covers(q)

    # -- the hit path -----------------------------------------------------------------------

    def hit(self, q: Query, size: int) -> bytes | None:
        """A complete reply for ``q`` from a fresh entry, or None (miss, expired, too big)."""
        return self.hit_wire(q.key, q.data, q.q_end, client_opt(q), size)

    def hit_wire(self, key: bytes, data: bytes, qe: int, opt: bytes,
                 size: int) -> bytes | None:
        """The hit path's lookup: the reply to the client's datagram ``data`` (its question
        ends at ``qe``) from the fresh entry under ``key``, with ``opt`` appended (``b""``
        for a client without EDNS), if it fits ``size``; else None.

        The index looked up is the store's own (key -> entry): nothing else is remembered
        per query shape, so this costs the same for 10 names as for a full cache."""
        e = self._index.get(key)
        if e is None:
            return None
        clk = self._clock
        now = _monotonic() + clk.offset if self._stock_clock else clk.now()  # type: ignore[union-attr]
        ttl = e.orig_ttl - int(now - e.stored)
        if ttl <= 0:
            return None
        rttl = e.orig_ttl if self._keepttl else ttl
        if rttl != e.tpl_ttl:
            e.set_ttl(rttl)
        # The reply is the client's datagram up to the end of its question (its ID and its
        # letter case), our flags and counts, the records, our OPT (see store.py).
        rest = e.rest
        if qe + len(rest) + len(opt) > size:
            return None
        h = e.head
        self.hits[h.cls] += 1
        e.used = True
        if self._pf and self._popular(e, now, ttl):
            st, q = wire.scan_query(data)
            if q is not None and not st:
                self._refresh(e, Request(q, REFRESH_PEER, "udp", "", self.zones[0]))
        # policy.assemble, inlined (a call frame is ~10% of a hit); tests pin both to render.
        return b"".join((data[:2], h.variants[(4 if opt else 0) | (data[2] & 1)
                                              | (data[3] >> 4 & 2)],
                         data[12:qe], rest, opt))

    def _popular(self, e: Entry, now: float, ttl: int) -> bool:
        """CoreDNS's prefetch rule: AMOUNT hits with no gap of DURATION, TTL under the mark.
        (A cache with prefetch stores only :class:`Popular` entries.)"""
        assert isinstance(e, Popular)
        if now - e.last > self._pf_window:
            e.hits = 1
        else:
            e.hits += 1
        e.last = now
        return (e.hits >= self._pf and ttl <= math.ceil(self._pf_pct / 100 * e.orig_ttl)
                and not e.refreshing)

    # -- the slow path ----------------------------------------------------------------------

    async def serve(self, req: Request, w: Writer) -> int:
        q = req.q
        if not (self._all or self._zone_set.covers(q)):
            return await self.next_serve(req, w)
        if q.qtype == wire.T_AXFR or q.qtype == wire.T_IXFR:
            self.misses += 1
            return await self.next_serve(req, w)
        key = q.key
        e = self._index.get(key)
        if e is None:  # the usual miss: no clock read needed
            self.misses += 1
            nxt = self.next
            flights = self._flights
            if nxt is None or key in flights.waiting:
                return self.answer(req, w, await self.fetch(req, False))
            # The first miss of this key: fetch() inlined (one coroutine layer less; the
            # tests of identical misses in flight see both).
            waiters: list[asyncio.Future[Outcome]] = []
            flights.waiting[key] = waiters
            res = _FAILED
            try:
                rec = Recorder(req)
                res = self._fetched(req, rec, await nxt.serve(req, rec), False)
            finally:
                flights.land(key, waiters, res)
            return self.answer(req, w, res)
        now = self.now()
        ttl = e.remaining(now)
        if ttl > 0:
            self.hits[e.cls] += 1
            e.used = True
            if self._pf and self._popular(e, now, ttl):
                self._refresh(e, detached(req))
            w.send(policy.render(e, q, self.ttl_for(e, now)), "cache")
            return wire.NOERROR
        if self._stale > 0 and -ttl < self._stale:
            self.hits[e.cls] += 1
            return await self._serve_stale(req, w, e)
        self.store.remove(q.key, e)  # expired for good
        self.misses += 1
        return self.answer(req, w, await self.fetch(req, False))

    async def _serve_stale(self, req: Request, w: Writer, e: Entry) -> int:
        if self.cfg.stale_verify:
            task = self.background.spawn(self.fetch(detached(req), True))
            done, _ = await asyncio.wait({task}, timeout=VERIFY_TIMEOUT)
            if task in done and not task.cancelled() and task.exception() is None:
                res = task.result()
                if res.reply is not None and wire.rcode(res.reply) in (
                        wire.NOERROR, wire.NXDOMAIN):
                    return self.answer(req, w, res)
        else:
            self._refresh(e, detached(req))
        self.served_stale += 1
        w.send(policy.render(e, req.q, 0), "cache")
        return wire.NOERROR

    def answer(self, req: Request, w: Writer, res: Outcome) -> int:
        """Write what an exchange produced for this client."""
        if res.error is not None and "error" not in req.meta:
            req.meta["error"] = res.error
        e = res.entry
        if e is not None:
            # ttl_for, inlined (this runs once per miss)
            ttl = e.orig_ttl if self._keepttl else e.orig_ttl - int(self.now() - e.stored)
            if ttl > 0:  # the entry's template, at this TTL (as the hit path answers)
                if ttl != e.tpl_ttl:
                    e.set_ttl(ttl)
                w.send(assemble(e, req.q, client_opt(req.q)), res.plugin)
            else:
                w.send(policy.render(e, req.q, ttl), res.plugin)
        elif res.reply is not None:
            w.write(policy.passthrough(res.reply, req.q, self._aa), res.plugin)
        return res.rc

    async def fetch(self, req: Request, refresh: bool) -> Outcome:
        """Run the rest of the chain once for this key; concurrent callers share the result.

        The first caller runs the exchange; later ones each wait on a future of their own
        (so the first creates none, and a cancelled waiter disturbs nobody)."""
        key = req.q.key
        flights = self._flights
        waiters = flights.waiting.get(key)
        if waiters is not None:
            return await flights.follow(waiters)
        waiters = flights.lead(key)
        res = _FAILED
        try:
            rec = Recorder(req)
            nxt = self.next
            rc = await nxt.serve(req, rec) if nxt is not None else wire.SERVFAIL
            res = self._fetched(req, rec, rc, refresh)
        finally:
            flights.land(key, waiters, res)
        return res

    def _fetched(self, req: Request, rec: Recorder, rc: int, refresh: bool) -> Outcome:
        """What an exchange through the rest of the chain produced (stored if it may be)."""
        reply = rec.reply
        entry = self.store_reply(req, reply, refresh) if reply is not None else None
        return Outcome(rc, reply, rec.plugin, entry, req.meta.get("error"))

    # -- storing ----------------------------------------------------------------------------

    def store_reply(self, req: Request, reply: bytes, refresh: bool) -> Entry | None:
        """Store ``reply`` if it may be cached; the new entry or None.

        A reply that answers (NOERROR, NXDOMAIN) but is not stored still retires the entry it
        would have replaced: stale data is for when the upstream fails, not for when it says
        something we may not keep. A failure (SERVFAIL...) leaves the entry alone.
        """
        q = req.q
        if not req.match(reply):
            self.drops += 1
            return None
        e = self._entry_for(q, reply, refresh)
        if e is not None:
            self.store.put(q.key, e)
        elif len(reply) > 3 and not reply[2] & 0x02 and reply[3] & 0x0F in (
                wire.NOERROR, wire.NXDOMAIN):
            self.store.remove(q.key)
        return e

    def restore(self, q: Query, reply: bytes, ttl: int, stored: float) -> Entry | None:
        """Store ``reply`` as a snapshot saved it (``ttl``: the entry's TTL, ``stored``: when
        it was stored, on this clock): the checks and the store of a miss (``_entry_for``,
        ``store.put``), with the saved TTL and time instead of the reply's and now's."""
        e = self._entry_for(q, reply, False, (ttl, stored))
        if e is not None:
            self.store.put(q.key, e)
        return e

    def _entry_for(self, q: Query, reply: bytes, refresh: bool,
                   saved: tuple[int, float] | None = None) -> Entry | None:
        p = policy.parse_reply(q, reply)
        if p is None:
            return None
        cfg = self.cfg
        kind = p.kind
        if kind == SUCCESS:
            off = self._off_success
            ttl = policy.min_ttl(p.rrs) if saved is None else saved[0]
            c = cfg.success
        elif cfg.no_negcache:
            return None
        else:
            off = self._off_denial
            if kind == DENIAL:
                ttl = policy.denial_ttl(p.body, p.rrs) if saved is None else saved[0]
                c = cfg.denial
            else:  # SERVFAIL: its own duration, no floor or cap
                ttl = int(cfg.servfail) if saved is None else min(saved[0], int(cfg.servfail))
                c = None
        if c is not None:  # (clamped inline: this runs once per miss)
            ttl = c.max_ttl if ttl > c.max_ttl else c.min_ttl if ttl < c.min_ttl else ttl
        if ttl <= 0 or self.store.caps[SUCCESS if kind == SUCCESS else DENIAL] <= 0:
            return None
        if off is not None and off.covers(q):
            return None
        old = self._index.get(q.key) if refresh else None  # (a client's miss: not needed)
        if refresh and kind == SERVFAIL and old is not None:
            return None  # a failed refresh must not hide the answer we have (stale or not)
        stored = self._stamp() if saved is None else saved[1]
        e = policy.make_entry(q, p, ttl, stored, self._aa, bool(self._pf))
        if refresh and isinstance(old, Popular) and isinstance(e, Popular):
            e.hits, e.last = old.hits, old.last  # keep the popularity across a prefetch
        return e

    # -- background refreshes ---------------------------------------------------------------

    def _refresh(self, e: Entry, req: Request) -> None:
        """Refresh ``e`` in the background (at most one refresh per entry at a time)."""
        if self.background.refresh(e, req):
            self.prefetches += 1  # CoreDNS counts stale refreshes as prefetches too

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.snapshot is not None:
            self.snapshot.start()  # entries loaded before the listeners open
        if self.env is not None:
            from linkdns.plugins.cache import metrics

            metrics.attach(self.env, self)

    async def stop(self) -> None:
        await self.background.stop()
        if self.snapshot is not None:
            self.snapshot.stop()
        if self.env is not None:
            from linkdns.plugins.cache import metrics

            metrics.detach(self.env, self)

    def __repr__(self) -> str:
        s, d = self.store.sizes()
        return f"<Cache zones={self.zones} success={s} denial={d}>"
