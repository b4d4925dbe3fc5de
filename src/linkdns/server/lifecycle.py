"""The server's lifecycle: builds sites from the Corefile, owns listeners and tasks, starts,
reloads, hands over and drains them, and runs one query's chain (the slow path's end).

Lifecycle (uvicorn's order): take the sockets over from a predecessor (hand-over, when on)
-> start plugins -> bind listeners (or serve the inherited sockets) -> serve -> on stop: stop
accepting, drain in-flight queries with a deadline, cancel the rest, close, stop plugins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from linkdns import http, plugin, wire, workers
from linkdns.clock import Clock
from linkdns.config import SiteConfig, build_sites
from linkdns.corefile import ServerBlock
from linkdns.request import Request
from linkdns.server import handover
from linkdns.server.frontdoor import Route
from linkdns.server.listen import MAX_INFLIGHT, TCP_DRAIN_IDLE, Listener
from linkdns.server.metrics import ServerCollector
from linkdns.server.site import Site
from linkdns.server.sockets import server_label
from linkdns.server.stats import ServerStats
from linkdns.server.succession import Succession
from linkdns.server.tcp import TCPProtocol, tcp_limit
from linkdns.server.udp import UDPProtocol
from linkdns.workers import Worker
from linkdns.writer import Writer

log = logging.getLogger("linkdns.server")


class Server(Succession):
    """Everything one linkdns process (or worker) serves."""

    def __init__(
        self,
        sites: list[SiteConfig],
        registry: CollectorRegistry | None = None,
        reuse_port: bool = False,
        drain_timeout: float = 5.0,
        max_inflight: int = MAX_INFLIGHT,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        #: the HTTP listeners by (host, port), one each for every block (plugin.Env.http)
        self.http_servers: dict[tuple[str, int], http.HTTPServer] = {}
        #: what plugins keep for the whole server, by their key (plugin.Env.collector/keep)
        self.kept: dict[str, Any] = {}
        #: the clock plugins age entries by; tests advance it
        self.clock = Clock()
        self.stats = ServerStats()
        #: the server's own collector, once a block uses prometheus (expose_metrics)
        self.metrics: ServerCollector | None = None
        self.reuse_port = reuse_port
        self.drain_timeout = drain_timeout
        #: slow-path queries in flight per listener before new ones are shed (listen.py)
        self.max_inflight = max_inflight
        self.tasks: set[asyncio.Task[Any]] = set()
        #: server-level background tasks (the reload watcher): cancelled at stop, not drained
        self.background: dict[str, asyncio.Task[Any]] = {}
        self.listeners: dict[tuple[str, int], Listener] = {}
        self.started = asyncio.Event()
        #: set by :meth:`fail` (e.g. the loop plugin): the process should stop, exit code 1
        self.failed = asyncio.Event()
        self.exit_code = 0
        self.stopping = False
        self.start_time = time.time()
        #: the Corefile this server was loaded from (the reload plugin watches it)
        self.source: str | None = None
        self.dns_port = 53
        #: set in ``-workers N`` mode (see workers.py)
        self.worker: Worker | None = None
        self._exposition: asyncio.AbstractServer | None = None
        #: run by this (old) instance right before it hands its sockets to a successor
        #: (the cache's snapshot writer registers here)
        self.handover_hooks: list[Callable[[], None]] = []
        #: the hand-over control socket (None: off; the CLI sets it, see server/handover.py)
        self.handover_path: str | None = None
        #: the control path for a set of listen addresses (the CLI's derivation): a reload
        #: that changes the addresses moves the control socket where a successor started
        #: with the new Corefile looks for it
        self.handover_derive: Callable[[list[tuple[str, int]]], str | None] | None = None
        #: True once a successor serves on this instance's sockets (shared from then on):
        #: what is bound to this process's addresses belongs to the successor too -- stop
        #: without a lame duck and without undoing node set-up (node-local teardown)
        self.handed_over = False
        #: sockets received from a predecessor, until the listeners took them
        self.inherited: handover.Inherited | None = None
        self._control: handover.Control | None = None
        #: the connection to the predecessor, open while we serve (it resumes when it closes)
        self._pred: handover.Predecessor | None = None
        #: duplicates of our listening sockets kept after a hand-over, to serve them again
        #: if the successor goes away before we stop
        self._saved: handover.Inherited | None = None
        self._retired: asyncio.Task[None] | None = None
        self.sites = [Site(c, self) for c in sites]

    @classmethod
    def from_blocks(cls, blocks: list[ServerBlock], dns_port: int = 53, **kw: Any) -> Server:
        server = cls(build_sites(blocks, dns_port), **kw)
        server.dns_port = dns_port
        return server

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        pred: handover.Predecessor | None = None
        if self.handover_path is not None:
            found = await handover.take_over(self.handover_path)
            if found is not None:
                pred, self.inherited = found
        try:
            # Plugins start once the sockets are here (the cache loads its snapshot, the
            # HTTP plugins serve inherited listeners) and before the first query is read.
            for site in self.sites:
                await site.start()
            await self._listen(self.sites)
            if self.worker is not None:
                reg = self.registry
                self._exposition = await workers.serve_exposition(
                    self.worker, lambda: generate_latest(reg))
            if self.handover_path is not None:
                try:
                    self._open_control(self.handover_path)
                except OSError as e:  # serve anyway; only a successor will not find us
                    log.error("hand-over: no control socket at %s: %s", self.handover_path, e)
                    self._control = None
        except BaseException:
            if pred is not None:
                pred.close()  # the predecessor keeps serving alone
            raise
        finally:
            if self.inherited is not None:
                self.inherited.close()
                self.inherited = None
        if pred is not None:
            if await pred.serving():
                log.info("hand-over: serving; pid %d may stop now", pred.peer.pid)
                self._pred = pred  # closed when we stop: the predecessor may serve again
            else:
                pred.close()
        self.started.set()

    async def _listen(self, sites: list[Site]) -> list[Listener]:
        """Point listeners at ``sites``: reuse those on an address and port still wanted,
        open new ones; return the ones no longer wanted (still open)."""
        by_addr: dict[tuple[str, int], list[Site]] = {}
        for site in sites:
            for addr in site.addrs or [""]:
                by_addr.setdefault((addr, site.port), []).append(site)
        for key, group in by_addr.items():
            ln = self.listeners.get(key)
            if ln is None:
                ln = Listener(self.stats, self.spawn, self.handle, *key, self.max_inflight,
                              tcp_limit())
                ln.set_sites(group)  # routes in place before the first query is read
                await ln.start(self.reuse_port, self.take_inherited(("dns", *key)),
                               udp=partial(UDPProtocol, ln), tcp=partial(TCPProtocol, ln))
                self.listeners[key] = ln
                if not ln.host:
                    log.warning("no bind for port %d: answering queries on every IPv4 address "
                                "of this host; restrict it with bind ADDRESS, or who is "
                                "answered with acl (docs/plugins/bind.md)", ln.port)
            ln.set_sites(group)  # one assignment: queries from now on see the new chains
            for z in sorted({z for s in group for z in s.zones}):
                log.info("%s", f"{z}:{ln.port} on {ln.host or '*'}")
        return [self.listeners.pop(k) for k in list(self.listeners) if k not in by_addr]

    async def reload(self, cfgs: list[SiteConfig]) -> None:
        """Swap in new server blocks without closing listeners that stay.

        The new plugins start first (a failure leaves the old configuration serving); then
        the listeners switch to the new chains in one step; queries already running finish
        on the old chains (bounded by the drain timeout) before the old plugins stop. Caches
        start empty, as in CoreDNS. Counters keep counting.
        """
        if self.handed_over or self.stopping:
            log.info("Reload skipped: %s", "handed over" if self.handed_over else "stopping")
            return
        new = [Site(c, self) for c in cfgs]
        started: list[Site] = []
        try:
            for site in new:
                await site.start()
                started.append(site)
            gone = await self._listen(new)
        except BaseException:
            for site in started:
                await site.stop()
            raise
        old, self.sites = self.sites, new
        in_flight = set(self.tasks)
        for ln in gone:
            ln.stop_accepting()
        if in_flight:
            await asyncio.wait(in_flight, timeout=self.drain_timeout)
        for ln in gone:
            ln.close()
        for site in old:
            await site.stop()
        self._move_control()
        log.info("Reload completed: %d server block(s)", len(new))

    async def stop(self) -> None:
        """Graceful stop: no new queries, in-flight ones finish (bounded), then close."""
        if self.stopping:
            return
        self.stopping = True  # the ready plugin answers 503 "Shutting down" from here on
        if self._control is not None:
            self._control.close()
        if self._pred is not None:
            self._pred.close()  # a predecessor still idling serves again while we drain
            self._pred = None
        if self.started.is_set() and not self.handed_over:
            # Lame duck: setup plugins' pre-stop hooks run while listeners still serve. (Not
            # after a hand-over: the successor serves these sockets, nothing to steer away.)
            hooks = [p.lameduck() for s in self.sites for p in s.setups]
            for e in await asyncio.gather(*hooks, return_exceptions=True):
                if isinstance(e, Exception):
                    log.error("lameduck hook failed: %s", e)
        for t in self.background.values():
            t.cancel()
        if self._retired is None:
            self._retired = asyncio.get_running_loop().create_task(self._retire())
        await self._retired
        if self.handed_over:
            # Drained at the hand-over, idle since: a connection accepted as the listener
            # closed may have had its first query read after that drain; it is answered, not cut.
            await self._drain(time.monotonic() + self.drain_timeout)
        for ln in self.listeners.values():
            ln.close()
        if self._exposition is not None:
            self._exposition.close()
        for site in self.sites:
            await site.stop()
        if self._saved is not None:
            self._saved.close(quiet=True)
            self._saved = None

    async def _retire(self) -> None:
        """Stop reading and drain: at stop, or as soon as a successor serves our sockets
        (then the process idles until SIGTERM, so a rolling update's old pod stays until
        Kubernetes deletes it, and a SIGKILL then loses nothing)."""
        self._stop_reading()
        await self._drain(time.monotonic() + self.drain_timeout)
        if self.handed_over and not self.stopping:
            log.info("hand-over: drained; idle until SIGTERM")

    def _stop_reading(self) -> None:
        if self.handed_over:
            for srv in self.http_servers.values():
                srv.stop_accepting()  # the successor answers every probe from now on
        for ln in self.listeners.values():
            ln.stop_accepting()

    async def _drain(self, deadline: float) -> None:
        """Queries in flight finish; each TCP connection closes once idle (its answers out,
        nothing read for TCP_DRAIN_IDLE), so a client that connected just before the stop
        still has its query read and answered. Bounded by ``deadline``; then cancel."""
        # A connection accepted in the loop iteration that closed the listener gets its
        # connection_made (uvloop: call_soon) first, so it is among the connections drained.
        await asyncio.sleep(0)
        while True:
            now = time.monotonic()
            conns = [c for ln in self.listeners.values() for c in ln.tcp_conns]
            for c in conns:
                if c.idle_for(now) >= TCP_DRAIN_IDLE:
                    c.close()
            busy = set(self.tasks)
            if (not busy and not conns) or now >= deadline:
                break
            step = min(deadline - now, TCP_DRAIN_IDLE / 4)
            if busy:
                await asyncio.wait(busy, timeout=step)
            else:
                await asyncio.sleep(step)
        pending = set(self.tasks)
        for t in pending:
            t.cancel()
        if pending:
            log.warning("cancelled %d queries still in flight after %.1fs",
                        len(pending), self.drain_timeout)
            await asyncio.gather(*pending, return_exceptions=True)

    def label(self, site: Site) -> str:
        """The ``server`` label of ``site``: the first listener that routes to it."""
        names = sorted(
            ln.name for ln in self.listeners.values()
            if any(r.site is site for r in ln.routes.values())
        )
        if names:
            return names[0]
        return server_label(site.addrs[0] if site.addrs else "", site.port)

    def expose_metrics(self) -> None:
        """Register the server's own collector (coredns_dns_* ...), once."""
        if self.metrics is None:
            self.metrics = ServerCollector(self.listeners, lambda: self.stats)
            self.registry.register(self.metrics)
            # process_* (CPU, memory, fds, start time) as Go's client exports for CoreDNS
            ProcessCollector(registry=self.registry)

    def fail(self, msg: str) -> None:
        """A fatal condition (CoreDNS's log.Fatal): log it and ask the process to stop."""
        log.critical("%s", msg)
        self.exit_code = 1
        self.failed.set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a coroutine owned by the server: finite work (a query, a cache refresh) that
        stop() and reload() drain like a query in flight, then cancel. A task that runs for
        the life of a plugin (a watcher, a health checker) belongs to the plugin's own
        start()/stop() instead, or every stop would wait out the drain timeout on it."""
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    def ready(self) -> list[str]:
        """Names of plugins not ready yet (empty = ready)."""
        if not self.started.is_set():
            return ["server"]
        out: list[str] = []
        for s in self.sites:
            out.extend(n for n in s.not_ready() if n not in out)
        return out

    def port(self, host: str = "") -> int:
        """The bound port of the first listener (tests use it with port 0 in the Corefile)."""
        for (h, _), ln in self.listeners.items():
            if not host or h == host:
                return ln.port
        raise KeyError(host)

    # -- the slow path ----------------------------------------------------------------------

    async def handle(self, r: Route, req: Request, w: Writer, ln: Listener | None = None
                     ) -> None:
        """Run the site's chain for one query; always answer or count it. ``ln``: the
        listener whose in-flight count this query holds (released here)."""
        rc = wire.SERVFAIL
        try:
            chain = r.site.chain
            if chain is not None:
                rc = await chain.serve(req, w)
            # The returned rcode alone says who answers (linkdns.plugin).
            if rc == plugin.DROPPED:
                w.drop()  # no reply on purpose (acl's drop): nothing sent
                self.stats.drop(req.server, "acl")
                return
            if not plugin.client_wrote(rc):
                w.send(wire.error_reply(req.q, req.data, rc))
        except asyncio.CancelledError:
            # No rcode came back: answer unless the writer already sent something.
            if w.rcode < 0:
                w.send(wire.error_reply(req.q, req.data, wire.SERVFAIL))
                r.stats.count_response(wire.SERVFAIL, "", req.proto == "tcp", w.size,
                                       time.perf_counter() - req.start)
            raise
        except Exception:
            self.stats.panics += 1
            log.exception("panic while serving %r", req)
            if w.rcode < 0:
                w.send(wire.error_reply(req.q, req.data, wire.SERVFAIL))
        finally:
            if ln is not None:
                ln.inflight -= 1
        r.stats.count_response(w.rcode if w.rcode >= 0 else rc, w.plugin,
                               req.proto == "tcp", w.size, time.perf_counter() - req.start)
