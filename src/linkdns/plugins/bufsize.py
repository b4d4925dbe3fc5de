"""bufsize: lower the EDNS UDP size of queries that carry an OPT (CoreDNS's bufsize).

``bufsize [SIZE]``, SIZE 512..4096, default 1232 (DNS flag day 2020). Queries without an OPT
are left alone (no OPT is added). As in CoreDNS the request itself is rewritten, so
everything after it sees the lowered size: the OPT forwarded upstream, and the size the writer
truncates the reply to (TC=1 above it). On the cache-hit path ``hit_size`` lowers the size the
hit must fit in the same way, so hits and misses agree.
"""

from __future__ import annotations

from linkdns import plugin, wire
from linkdns.corefile import Directive
from linkdns.plugin import Handler, PluginSpec, register
from linkdns.request import Request
from linkdns.writer import Writer

DEFAULT_SIZE = 1232
MIN_SIZE = 512
MAX_SIZE = 4096
TCP_SIZE = 65535  # what server/frontdoor.py passes to hit_size for TCP queries


def parse(d: Directive) -> int:
    plugin.no_block(d)
    if not d.args:
        return DEFAULT_SIZE
    if len(d.args) > 1:
        raise plugin.arg_count_error(d)
    try:
        size = int(d.args[0], 10)
    except ValueError:
        raise plugin.arg_count_error(d) from None
    if not MIN_SIZE <= size <= MAX_SIZE:  # RFC 6891 (CoreDNS answers with ArgErr too)
        raise plugin.arg_count_error(d)
    return size


def lower(q: wire.Query, size: int) -> None:
    """Rewrite ``q`` in place: its OPT advertises at most ``size``, ``udp_size`` follows."""
    if not q.has_opt:
        return
    o = q.q_end + 3  # the OPT (the only additional record): root, TYPE, CLASS = size
    data = q.data
    if ((data[o] << 8) | data[o + 1]) <= size:
        return
    q.data = data[:o] + size.to_bytes(2, "big") + data[o + 2 :]
    q.udp_size = max(size, wire.MIN_UDP)


class Bufsize(Handler):
    name = "bufsize"
    hit_transparent = True  # hits take hit_size() instead
    hit_sizes = True

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def hit_size(self, size: int) -> int:
        # Called for UDP hits only (TCP has no size to lower).
        return size if size < self.size else self.size

    async def serve(self, req: Request, w: Writer) -> int:
        lower(req.q, self.size)
        return await self.next_serve(req, w)


register(PluginSpec("bufsize", parse, lambda size, env: Bufsize(size)))
