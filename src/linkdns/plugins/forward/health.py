"""Health checking (CoreDNS's in-band model): a failed exchange starts a probe loop for that
upstream that sends ``DOMAIN IN NS`` (default ``.``, RD unless ``no_rec``) every
``health_check`` interval until one gets any reply; each failed probe counts a failure.
An upstream with more than ``max_fails`` failures in a row is down. ``max_fails 0`` (or
``health_check 0``) disables it all.
"""

from __future__ import annotations

import asyncio
import logging

from linkdns import wire
from linkdns.errors import UpstreamError
from linkdns.plugins.forward.setup import ForwardConfig
from linkdns.plugins.forward.transport import Question
from linkdns.plugins.forward.upstream import Upstream

log = logging.getLogger("linkdns.plugin.forward")

#: CoreDNS's health check read timeout (capped by read_timeout)
PROBE_TIMEOUT = 1.0


class Health:
    def __init__(self, cfg: ForwardConfig) -> None:
        self.cfg = cfg
        name = wire.text_to_name(cfg.hc_domain)
        self.query = wire.make_query(name, wire.T_NS, 0, rd=cfg.hc_recursion)
        self.question = Question(name, wire.T_NS.to_bytes(2, "big") + b"\x00\x01",
                                 any_reply=True)
        self.proto = "tcp" if cfg.force_tcp else "udp"
        self.tasks: dict[Upstream, asyncio.Task[None]] = {}
        self.enabled = cfg.max_fails > 0 and cfg.hc_interval > 0
        self.stopped = False

    def failed(self, up: Upstream) -> None:
        """An exchange with ``up`` failed: count it and make sure a probe loop runs."""
        if not self.enabled:
            return
        up.fails += 1
        self.kick(up)

    def kick(self, up: Upstream) -> None:
        if not self.enabled or self.stopped or up in self.tasks:
            return
        t = asyncio.get_running_loop().create_task(self._loop(up))
        self.tasks[up] = t
        t.add_done_callback(lambda _t: self.tasks.pop(up, None))

    async def probe(self, up: Upstream) -> bool:
        """One health check: True when the upstream answered anything for the question."""
        timeout = min(PROBE_TIMEOUT, self.cfg.read_timeout)
        try:
            await up.exchange(self.query, self.question, self.proto, timeout)
        except UpstreamError as e:
            log.debug("health check of %s failed: %s", up.addr, e)
            return False
        return True

    async def _loop(self, up: Upstream) -> None:
        while True:
            if await self.probe(up):
                if up.fails > self.cfg.max_fails:
                    log.info("upstream %s is healthy again", up.addr)
                up.fails = 0
                return
            up.fails += 1
            up.hc_failures.inc()
            if up.fails == self.cfg.max_fails + 1:
                log.warning("upstream %s marked down after %d failures", up.addr, up.fails)
            await asyncio.sleep(self.cfg.hc_interval)

    async def stop(self) -> None:
        self.stopped = True
        tasks = list(self.tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
