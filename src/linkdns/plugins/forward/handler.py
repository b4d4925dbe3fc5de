"""The forward handler: match FROM/except, limit concurrency, share identical in-flight
queries, try upstreams in policy order (bounded), write the reply.

The attempt loop, per query: the upstreams that are up, in policy order (all down: one at
random, or SERVFAIL with ``failfast_all_unhealthy_upstreams``); at most
``max_connect_attempts`` attempts (default: one per upstream, and at least two), each bounded
by ``read_timeout`` and all by ``query_timeout``. An attempt that fails (timeout, refused,
closed, malformed reply) counts against that upstream and moves on. A UDP reply with TC=1 is
asked again once over TCP from the same upstream. A reply whose rcode is listed in
``failover`` moves on to the next upstream (once through the list; the last such reply is
answered if none is better). No path retries without bound.

The query path is kept short on purpose (it is the cache-miss path): identical queries in
flight share one exchange through a plain list of waiter futures (the first query creates no
future of its own), the usual single-upstream case skips the policy's list building, and UDP
attempts go straight to the upstream's socket pool.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any

from linkdns import wire
from linkdns.errors import UpstreamError
from linkdns.flight import Flights
from linkdns.plugin import Handler
from linkdns.plugins.forward import policy
from linkdns.plugins.forward.health import Health
from linkdns.plugins.forward.metrics import metrics_for
from linkdns.plugins.forward.setup import ForwardConfig
from linkdns.plugins.forward.transport import Question, with_question
from linkdns.plugins.forward.upstream import Upstream
from linkdns.request import Request
from linkdns.writer import Writer
from linkdns.zones import ZoneSet

if TYPE_CHECKING:
    from linkdns.plugin import Env

_perf = time.perf_counter
Result = tuple[bytes | None, str]  # (reply, error text)
_CANCELLED: Result = (None, "query cancelled")
#: the query flags that change what an upstream answers (a shared exchange needs them equal)
_SHARE_FLAGS = wire.RD | wire.CD | wire.AD


class Forward(Handler):
    name = "forward"
    upstream_alternative = True  # another forward's ``next`` may hand its reply here

    def __init__(self, cfg: ForwardConfig, env: Env) -> None:
        super().__init__()
        self.cfg = cfg
        self.metrics = metrics_for(env)
        self.clock = env.clock
        self.upstreams = [Upstream(s, cfg, self.metrics, self.clock.now) for s in cfg.upstreams]
        self.policy = policy.make(cfg.policy)
        self.health = Health(cfg)
        self.from_wire = wire.text_to_name(cfg.from_zone)
        self.ignored = ZoneSet(cfg.ignored)
        #: FROM is the root and nothing is excepted: every query matches
        self._match_all = self.from_wire == b"\x00" and not self.ignored
        #: the transport every query uses ("" = the client's)
        self._proto = "tcp" if cfg.force_tcp else "udp" if cfg.prefer_udp else ""
        #: the one upstream, in a ready-made candidate list (policy order is moot)
        self._one = self.upstreams[:1] if len(self.upstreams) == 1 else None
        self.opt = wire.make_opt(cfg.bufsize, False) if cfg.bufsize else b""
        #: identical queries in flight -> the futures of the queries waiting on the first one
        self.flights: Flights[tuple[Any, ...], Result] = Flights()
        self.concurrent = 0
        self._sweeper: asyncio.Task[None] | None = None
        #: the loop we run on, set by start() (asyncio.get_running_loop() is a call and, on
        #: CPython 3.11, a getpid() system call each time; None: ask asyncio)
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.health.stopped = False
        self.loop = loop = asyncio.get_running_loop()
        for up in self.upstreams:
            up.udp.loop = loop
        self._sweeper = loop.create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        await self.health.stop()
        for up in self.upstreams:
            up.close()
            await up.tcp.wait_closed()
            up.udp.loop = None
        self.loop = None

    def ready(self) -> bool:
        return bool(self.upstreams)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(max(self.cfg.expire, 1.0))
            now = self.clock.now()
            for up in self.upstreams:
                up.sweep(now)

    # -- the query path ----------------------------------------------------------------------

    def match(self, q: wire.Query) -> bool:
        """FROM covers the name and no ``except`` zone does (FROM itself always matches)."""
        if self._match_all:
            return True
        lname = q.qname_lower
        zone = self.from_wire
        if zone != b"\x00" and lname != zone and not any(
                lname[off:] == zone for off in q.labels):
            return False
        ignored = self.ignored
        if not ignored or lname == zone:
            return True
        return not ignored.covers(q)

    async def serve(self, req: Request, w: Writer) -> int:
        q = req.q
        if not self._match_all and not self.match(q):
            return await self.next_serve(req, w)
        cfg = self.cfg
        if cfg.max_concurrent and self.concurrent >= cfg.max_concurrent:
            self.metrics.max_concurrent_rejects.inc()
            req.meta["error"] = f"concurrent queries exceeded maximum {cfg.max_concurrent}"
            return wire.REFUSED
        proto = self._proto or req.proto
        # One upstream exchange for a burst of identical queries: the first runs it, the
        # others wait on a future of their own (cancelling one never disturbs the rest).
        key = (q.key, q.flags & _SHARE_FLAGS, proto, q.has_opt, q.udp_size)
        flights = self.flights
        waiters = flights.waiting.get(key)
        self.concurrent += 1
        try:
            if waiters is not None:
                reply, err = await flights.follow(waiters, self.loop)
            else:
                waiters = []
                flights.waiting[key] = waiters
                res = _CANCELLED
                try:
                    res = await self._exchange(q, proto)
                finally:
                    flights.land(key, waiters, res)
                reply, err = res
        finally:
            self.concurrent -= 1
        if reply is None:
            req.meta["error"] = err
            return wire.SERVFAIL
        nxt = self.next
        if cfg.next_rcodes and (reply[3] & 0x0F) in cfg.next_rcodes and (
                nxt is not None and nxt.upstream_alternative):
            return await nxt.serve(req, w)
        if not reply[3] & 0x80:
            # RA as in every reply linkdns sends (an upstream's REFUSED often comes without).
            reply = reply[:3] + bytes((reply[3] | 0x80,)) + reply[4:]
        if reply[5] == 0:  # an error reply without a question (transport._bare_error)
            reply = with_question(reply, q)
        w.write(reply, "forward")
        return wire.NOERROR

    def prepare(self, q: wire.Query) -> bytes:
        """The query to send: the client's bytes with our EDNS size when ``bufsize`` is set
        (the OPT's size replaced, or an OPT added). The transports put in a fresh ID."""
        data = q.data
        size = self.cfg.bufsize
        if size is None:
            return data
        if q.has_opt:  # the only additional record, at q_end: root, type, CLASS = size
            o = q.q_end + 3
            return data[:o] + size.to_bytes(2, "big") + data[o + 2 :]
        # No OPT: add ours right after the question (before any other additional record,
        # e.g. a TSIG, which must stay last).
        ar = ((data[10] << 8) | data[11]) + 1
        o = q.q_end
        return data[:10] + ar.to_bytes(2, "big") + data[12:o] + self.opt + data[o:]

    def candidates(self) -> list[Upstream] | None:
        """Upstreams to try, in policy order; None when all are down and we fail fast."""
        one = self._one
        if one is not None and not one[0].down():
            return one
        ups = self.policy.order(self.upstreams)
        live = [u for u in ups if not u.down()]
        if live:
            return live
        self.metrics.healthcheck_broken.inc()
        if self.cfg.failfast_all_unhealthy:
            return None
        return [random.choice(ups)]

    async def _exchange(self, q: wire.Query, proto: str) -> Result:
        cfg = self.cfg
        ups = self.candidates()
        if not ups:
            return None, "no healthy proxies"
        loop = self.loop or asyncio.get_running_loop()
        query = q.data if cfg.bufsize is None else self.prepare(q)
        question = Question.of(q, self.from_wire)
        n = len(ups)
        now = loop.time()
        deadline = now + cfg.query_timeout
        read_timeout = cfg.read_timeout
        udp = proto == "udp"
        err = "no healthy proxies"
        held: bytes | None = None  # a reply we failed over from
        for i in range(cfg.max_connect_attempts or max(n, 2)):
            if i:
                now = loop.time()
            remaining = deadline - now
            if remaining <= 0:
                break
            up = ups[i % n]
            t0 = _perf()
            try:
                if udp and not up.tls:
                    pool = up.udp
                    p = pool.send(query, question, min(read_timeout, remaining))
                    try:
                        reply = await p.fut
                    finally:
                        pool.done(p)
                    if reply[2] & 0x02:
                        # Truncated over UDP: once more over TCP to the same upstream.
                        remaining = deadline - loop.time()
                        if remaining > 0:
                            reply = await up.tcp.exchange(query, question,
                                                          min(read_timeout, remaining))
                else:
                    reply = await up.exchange(query, question, proto,
                                              min(read_timeout, remaining))
            except UpstreamError as e:
                err = str(e)
                self.health.failed(up)
                continue
            up.fails = 0
            rc = reply[3] & 0x0F
            up.stats.observe(rc, _perf() - t0)
            if rc in cfg.failover and i + 1 < n:
                held = reply
                continue
            return reply, ""
        if held is not None:
            return held, ""
        return None, err
