"""loop: detect a forwarding loop (the node cache forwarding to itself) and stop.

As CoreDNS's loop: at start the block sends itself one query, ``<random>.<random>.ZONE HINFO``,
retrying every second for up to 30 s until some reply comes back. If that query passes
through this plugin more than twice before then, queries are going round in circles (for
example ``forward . /etc/resolv.conf`` on a node whose resolv.conf points back at this cache):
linkdns logs ``Loop (...) detected ...`` and exits with status 1, as CoreDNS does, so the
DaemonSet's crash loop makes the misconfiguration visible instead of burning CPU. After the
first reply the plugin steps aside (one name comparison per query on the slow path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from typing import TYPE_CHECKING

from linkdns import wire
from linkdns.corefile import Directive
from linkdns.plugin import Handler, PluginSpec, arg_count_error, register
from linkdns.request import Request
from linkdns.writer import Writer

if TYPE_CHECKING:
    from linkdns.plugin import Env

log = logging.getLogger("linkdns.plugin.loop")

PROBE_FOR = 30.0  # seconds to keep probing until a reply arrives
PROBE_EVERY = 1.0
SEEN_MAX = 2  # more sightings than this means a loop
T_HINFO = 13


def parse(d: Directive) -> None:
    if d.args or d.block:
        raise arg_count_error(d)


class Loop(Handler):
    name = "loop"

    def __init__(self, env: Env) -> None:
        super().__init__()
        self.env = env
        self.zone = env.zones[0]
        labels = f"{random.getrandbits(63)}.{random.getrandbits(63)}"
        self.qname = labels + ("." if self.zone == "." else "." + self.zone)
        self.qname_wire = wire.text_to_name(self.qname)
        self.seen = 0
        self.disabled = False
        self._task: asyncio.Task[None] | None = None

    async def serve(self, req: Request, w: Writer) -> int:
        if not self.disabled and req.q.qname_lower == self.qname_wire:
            self.seen += 1
            if self.seen > SEEN_MAX:
                self.disabled = True
                self.env.fail(
                    f"plugin/loop: Loop ({req.peer[0]}:{req.peer[1]} -> {req.server}) detected "
                    f'for zone "{self.zone}", see https://coredns.io/plugins/loop#troubleshooting.'
                    f' Query: "HINFO {self.qname}"')
                return wire.SERVFAIL
        return await self.next_serve(req, w)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._probe())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _probe(self) -> None:
        env = self.env
        await env.started.wait()
        host = env.addrs[0] if env.addrs else "127.0.0.1"
        port = env.bound_port(env.addrs[0] if env.addrs else "")
        loop = asyncio.get_running_loop()
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        deadline = loop.time() + PROBE_FOR
        try:
            while loop.time() < deadline and not self.disabled:
                q = wire.make_query(self.qname_wire, T_HINFO, random.getrandbits(16))
                with socket.socket(fam, socket.SOCK_DGRAM) as s:
                    s.setblocking(False)
                    try:
                        s.connect((host, port))  # UDP: sets the peer, sends nothing
                        await loop.sock_sendall(s, q)
                        await asyncio.wait_for(loop.sock_recv(s, 65535), PROBE_EVERY)
                        break  # any answer: no loop (or it would have been caught by now)
                    except TimeoutError:
                        continue  # waited PROBE_EVERY already
                    except OSError:
                        await asyncio.sleep(PROBE_EVERY)
        finally:
            self.disabled = True


register(PluginSpec("loop", parse, lambda cfg, env: Loop(env)))
