"""loadbalance: randomize the order of A and AAAA records in answers, cache hits included.

CoreDNS's loadbalance ``round_robin`` shuffles address records in every reply so clients
that take the first address spread over all of them. Here the shuffle is done on the wire:
the address records of one owner name and type keep their places and their rdata (4 or 16
bytes, no names inside) is permuted among them. That touches no compression pointer, so it is
safe on any reply, and it works on the cache-hit path through the ``hit_rewrite`` hook
(after the cache copied its stored bytes; the stored entry is never changed).
"""

from __future__ import annotations

import random

from linkdns import replies, wire
from linkdns.corefile import Directive
from linkdns.errors import WireError
from linkdns.plugin import Handler, PluginSpec, err, register
from linkdns.request import Request
from linkdns.writer import WrapWriter, Writer

_ADDRESS = (wire.T_A, wire.T_AAAA)


def parse(d: Directive) -> str:
    if d.block:
        raise err(d, "loadbalance takes no block")
    if d.args and d.args[0] == "weighted":
        raise err(d, "the 'weighted' policy is not supported by linkdns; use round_robin")
    if len(d.args) > 1 or (d.args and d.args[0] != "round_robin"):
        raise err(d, f"unknown policy: {' '.join(d.args)}")
    return "round_robin"


def shuffle(buf: bytearray) -> None:
    """Permute the rdata of each group of A/AAAA answers with the same owner, in place."""
    if len(buf) < 12 or (buf[6] == 0 and buf[7] < 2):
        return
    try:
        _, rrs = replies.walk(buf)
    except WireError:
        return
    groups: dict[tuple[bytes, int], list[replies.RR]] = {}
    for r in rrs:
        if r.section == 0 and r.rtype in _ADDRESS:
            groups.setdefault((bytes(buf[r.start : r.rdata - 10]), r.rtype), []).append(r)
    for group in groups.values():
        if len(group) < 2:
            continue
        datas = [bytes(buf[r.rdata : r.end]) for r in group]
        random.shuffle(datas)
        for r, d in zip(group, datas, strict=True):
            buf[r.rdata : r.end] = d


class _ShuffleWriter(WrapWriter):
    __slots__ = ()

    def write(self, reply: bytes, plugin: str = "") -> None:
        b = bytearray(reply)
        shuffle(b)
        super().write(bytes(b), plugin)

    def send(self, out: bytes, plugin: str = "") -> None:
        b = bytearray(out)
        shuffle(b)
        super().send(bytes(b), plugin)


class LoadBalance(Handler):
    name = "loadbalance"
    hit_transparent = True  # it rewrites hits through hit_rewrite
    hit_rewrites = True

    async def serve(self, req: Request, w: Writer) -> int:
        return await self.next_serve(req, _ShuffleWriter(w))

    def hit_rewrite(self, reply: bytearray) -> None:
        shuffle(reply)


register(PluginSpec("loadbalance", parse, lambda cfg, env: LoadBalance()))
