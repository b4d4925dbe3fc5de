"""The hosts handler: answers A, AAAA and PTR from the hosts data; re-reads a changed file.

Query path as CoreDNS's plugin/hosts/hosts.go:

* a name outside the plugin's zones goes to the next plugin, except PTR queries (reverse
  zones need not be listed);
* PTR: the names of the address the reverse name stands for; an address without names goes
  to the next plugin, whatever ``fallthrough`` says;
* A / AAAA: the addresses of the name, file entries first, then the inline ones;
* no answer and no address of either family for the name: the next plugin when
  ``fallthrough`` covers the name, else SERVFAIL (there is no SOA to make an NXDOMAIN);
* otherwise an authoritative reply (AA) with the answers, maybe none (NODATA for a name that
  exists with the other family or for any other type).

The reply is built on the wire: header, the query's question, one record per answer whose
owner is a compression pointer to the question name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from linkdns import wire
from linkdns.plugin import Handler
from linkdns.plugins.hosts import metrics
from linkdns.plugins.hosts.hostsfile import (
    HostsData,
    HostsMap,
    parse_hosts,
    reverse_key,
)
from linkdns.request import Request
from linkdns.writer import Writer
from linkdns.zones import in_zones

if TYPE_CHECKING:
    from linkdns.plugin import Env

log = logging.getLogger("linkdns.plugin.hosts")

_HEAD = struct.Struct(">HHHHHH")
_RR = struct.Struct(">HHHIH")  # owner pointer, type, class, ttl, rdlength
_QUESTION_PTR = 0xC000 | wire.HEADER_LEN


def reply(q: wire.Query, ttl: int, rdatas: list[bytes]) -> bytes:
    """An authoritative NOERROR reply to ``q`` with one ``q.qtype`` record per rdata."""
    flags = wire.QR | wire.AA | wire.RA | (q.flags & (wire.RD | wire.CD))
    out = [_HEAD.pack(q.id, flags, 1, len(rdatas), 0, 0), q.question]
    for rd in rdatas:
        out.append(_RR.pack(_QUESTION_PTR, q.qtype, wire.C_IN, ttl, len(rd)))
        out.append(rd)
    return b"".join(out)


@dataclass(frozen=True)
class Options:
    """What the handler needs from the configuration, with the zones resolved."""

    path: str
    origins: tuple[str, ...]
    inline: HostsMap
    ttl: int
    reload: float
    reverse: bool
    #: zones where a missing name goes to the next plugin; None without ``fallthrough``
    fall: tuple[str, ...] | None


_Loaded = tuple[tuple[int, int], float, HostsMap]


class Hosts(Handler):
    name = "hosts"

    def __init__(self, opts: Options, env: Env) -> None:
        super().__init__()
        self.opts = opts
        self.env = env
        self.data = HostsData(HostsMap(), opts.inline)
        #: (mtime_ns, size) of the file last read, and its mtime in seconds
        self._stamp: tuple[int, int] | None = None
        self._mtime = 0.0
        self._task: asyncio.Task[None] | None = None

    async def serve(self, req: Request, w: Writer) -> int:
        name, qtype = req.name, req.qtype
        if qtype != wire.T_PTR and not in_zones(name, self.opts.origins):
            return await self.next_serve(req, w)
        data = self.data
        if qtype == wire.T_PTR:
            key = reverse_key(name)
            rdatas = data.ptr(key) if key is not None else []
            if not rdatas:
                return await self.next_serve(req, w)
        elif qtype == wire.T_A:
            rdatas = data.v4(name)
        elif qtype == wire.T_AAAA:
            rdatas = data.v6(name)
        else:
            rdatas = []
        if not rdatas and not data.exists(name):
            fall = self.opts.fall
            if fall is not None and in_zones(name, fall):
                return await self.next_serve(req, w)
            return wire.SERVFAIL
        w.write(reply(req.q, self.opts.ttl, rdatas), "hosts")
        return wire.NOERROR

    # -- the file ---------------------------------------------------------------------------

    def load(self) -> _Loaded | None:
        """Read and parse the file if its mtime or size changed since the last read; None
        when it did not change or cannot be read (the entries read before stay)."""
        try:
            with open(self.opts.path, "rb") as f:
                st = os.fstat(f.fileno())
                stamp = (st.st_mtime_ns, st.st_size)
                if stamp == self._stamp:
                    return None
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        return stamp, st.st_mtime_ns / 1e9, parse_hosts(text, self.opts.origins,
                                                        self.opts.reverse)

    def apply(self, loaded: _Loaded) -> None:
        self._stamp, self._mtime, fmap = loaded
        self.data = HostsData(fmap, self.opts.inline)
        log.debug("Parsed hosts file into %d entries", len(fmap))

    def changed(self) -> bool:
        try:
            st = os.stat(self.opts.path)
        except OSError:
            return False
        return (st.st_mtime_ns, st.st_size) != self._stamp

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.opts.reload)
            if self.changed():
                loaded = await asyncio.to_thread(self.load)
                if loaded is not None:
                    self.apply(loaded)

    # -- lifecycle and metrics --------------------------------------------------------------

    async def start(self) -> None:
        loaded = self.load()
        if loaded is not None:
            self.apply(loaded)
        metrics.attach(self.env, self)
        if self.opts.reload > 0 and self._task is None:
            # Our own task, not server.spawn: the server drains its tasks at stop and reload,
            # and this one never ends by itself.
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        metrics.detach(self.env, self)
        t, self._task = self._task, None
        if t is not None:
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    def entries(self) -> int:
        return len(self.data)

    def reloaded(self) -> float:
        return self._mtime
