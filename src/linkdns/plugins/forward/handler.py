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
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any

from linkdns import wire
from linkdns.errors import UpstreamError
from linkdns.plugin import Handler
from linkdns.plugins.forward import policy
from linkdns.plugins.forward.health import Health
from linkdns.plugins.forward.metrics import metrics_for
from linkdns.plugins.forward.setup import ForwardConfig
from linkdns.plugins.forward.transport import Question
from linkdns.plugins.forward.upstream import Upstream
from linkdns.request import Request
from linkdns.writer import Writer

if TYPE_CHECKING:
    from linkdns.server.site import Site

_perf = time.perf_counter
Result = tuple[bytes | None, str]  # (reply, error text)


class Forward(Handler):
    name = "forward"

    def __init__(self, cfg: ForwardConfig, site: Site) -> None:
        super().__init__()
        self.cfg = cfg
        self.metrics = metrics_for(site.shared, site.registry)
        self.clock = site.server.clock
        self.upstreams = [Upstream(s, cfg, self.metrics, self.clock.now) for s in cfg.upstreams]
        self.policy = policy.make(cfg.policy)
        self.health = Health(cfg)
        self.from_wire = wire.text_to_name(cfg.from_zone)
        self.ignored = frozenset(wire.text_to_name(z) for z in cfg.ignored)
        self.opt = wire.make_opt(cfg.bufsize, False) if cfg.bufsize else b""
        #: identical queries in flight -> the future of the one exchange they share
        self.inflight: dict[tuple[Any, ...], asyncio.Future[Result]] = {}
        self.concurrent = 0
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.health.stopped = False
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        await self.health.stop()
        for up in self.upstreams:
            up.close()

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
        lname = q.qname_lower
        zone = self.from_wire
        if zone != b"\x00" and lname != zone and not any(
                lname[off:] == zone for off in q.labels):
            return False
        ignored = self.ignored
        if not ignored or lname == zone:
            return True
        if b"\x00" in ignored:
            return False
        return not any(lname[off:] in ignored for off in q.labels)

    async def serve(self, req: Request, w: Writer) -> int:
        q = req.q
        if not self.match(q):
            return await self.next_serve(req, w)
        cfg = self.cfg
        if cfg.max_concurrent and self.concurrent >= cfg.max_concurrent:
            self.metrics.max_concurrent_rejects.inc()
            req.meta["error"] = f"concurrent queries exceeded maximum {cfg.max_concurrent}"
            return wire.REFUSED
        self.concurrent += 1
        try:
            reply, err = await self._shared(q, self._proto(req))
        finally:
            self.concurrent -= 1
        if reply is None:
            req.meta["error"] = err
            return wire.SERVFAIL
        if cfg.next_rcodes and (reply[3] & 0x0F) in cfg.next_rcodes and isinstance(
                self.next, Forward):
            return await self.next.serve(req, w)
        w.write(reply, "forward")
        return wire.NOERROR

    def _proto(self, req: Request) -> str:
        if self.cfg.force_tcp:
            return "tcp"
        if self.cfg.prefer_udp:
            return "udp"
        return req.proto

    async def _shared(self, q: wire.Query, proto: str) -> Result:
        """One upstream exchange for a burst of identical queries."""
        key = (q.key, q.flags & (wire.RD | wire.CD | wire.AD), proto, q.has_opt, q.udp_size)
        fut = self.inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self.inflight[key] = fut
        res: Result = (None, "query cancelled")
        try:
            res = await self._exchange(q, proto)
        finally:
            if self.inflight.get(key) is fut:
                del self.inflight[key]
            fut.set_result(res)
        return res

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
        loop = asyncio.get_running_loop()
        query = self.prepare(q)
        question = Question.of(q)
        n = len(ups)
        deadline = loop.time() + cfg.query_timeout
        err = "no healthy proxies"
        held: bytes | None = None  # a reply we failed over from
        for i in range(cfg.max_connect_attempts or max(n, 2)):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            up = ups[i % n]
            t0 = _perf()
            try:
                reply = await up.exchange(query, question, proto,
                                          min(cfg.read_timeout, remaining))
                if reply[2] & 0x02 and proto == "udp" and not up.tls:
                    # Truncated over UDP: once more over TCP to the same upstream.
                    remaining = deadline - loop.time()
                    if remaining > 0:
                        reply = await up.exchange(query, question, "tcp",
                                                  min(cfg.read_timeout, remaining))
            except UpstreamError as e:
                err = str(e)
                self.health.failed(up)
                continue
            up.fails = 0
            rc = reply[3] & 0x0F
            up.observe(rc, _perf() - t0)
            if rc in cfg.failover and i + 1 < n:
                held = reply
                continue
            return reply, ""
        if held is not None:
            return held, ""
        return None, err
