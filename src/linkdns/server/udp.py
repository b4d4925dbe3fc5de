"""UDP: the protocol that reads a listener's datagrams, with the cache-hit path inlined.

``datagram_received`` answers a hit without a task, dnslib or a Query object: it is
:func:`linkdns.server.frontdoor.hit_wire` inlined (a call frame is ~5% of a hit; tests pin
the two to each other and to the slow path's rendering). Anything else goes to the listener:
an error reply, a drop, or the slow path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from functools import partial
from typing import TYPE_CHECKING, Any

from linkdns.server.frontdoor import (
    COUNTS_OPT,
    COUNTS_PLAIN,
    KEY_FLAG,
    NO_OPT,
    OPTS,
    opt_shape,
    sized_opt,
)
from linkdns.server.sockets import UDPOut
from linkdns.server.stats import FIRST_TIME, LEDGER_MAX
from linkdns.writer import UDPWriter

if TYPE_CHECKING:
    from linkdns.server.listen import Listener

log = logging.getLogger("linkdns.server")

_perf = time.perf_counter


class UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.DatagramTransport | None = None
        self.out: UDPOut | None = None
        #: the slow path's writer for a request (made once: no closure per miss)
        self.writer: partial[UDPWriter] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.out = self.listener.out = UDPOut(transport)  # type: ignore[arg-type]
        self.writer = partial(UDPWriter, transport=self.out)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        t0 = _perf()
        ln = self.listener
        try:
            v6 = len(addr) > 2
            # Listener.hit_wire, inlined (a call frame is ~5% of a hit; tests pin both to the
            # slow path's rendering).
            n = len(data)
            looked = False
            if n >= 17 and not data[2] & 0xF8 and ln.accepting:
                counts = data[4:12]
                shape: tuple[int, int, bytes] | None
                if counts == COUNTS_OPT:
                    shape = OPTS.get(data[n - 11 :])  # an OPT without options: no search
                    if shape is not None:
                        qe = n - 11
                        z = qe - 5
                    else:
                        z = data.find(0, 12)
                        qe = z + 5
                        raw = data[qe:]
                        shape = OPTS.get(raw) or opt_shape(raw)
                elif counts == COUNTS_PLAIN:
                    qe = n
                    z = n - 5
                    shape = NO_OPT
                else:
                    shape = None
                if shape is not None and z >= 12:
                    size, flag, opt = shape
                    if data[3] & 0x10:  # CD
                        flag |= 2
                    name = data[12 : z + 1].lower()
                    r = ln.only or ln.route_name(name)
                    if r is not None and r.cache is not None:
                        if r.sizers:
                            for h in r.sizers:
                                size = h.hit_size(size)
                            if opt:
                                opt = sized_opt(size, flag & 1)
                        reply: bytes | bytearray | None = r.cache.hit_wire(
                            name + data[z + 1 : qe] + KEY_FLAG[flag], data, qe, opt, size)
                        if reply is not None:
                            if r.rewrites:  # (loadbalance shuffles the records in place)
                                mutable = bytearray(reply)
                                for h in r.rewrites:
                                    h.hit_rewrite(mutable)
                                reply = mutable
                            self.transport.sendto(reply, addr)  # type: ignore[union-attr]
                            # ZoneStats.count_hit, inlined: one ledger entry, the duration
                            st = r.stats
                            sig = (data[z + 1], data[z + 2], False, v6, flag, n, len(reply),
                                   reply[3])
                            hits = st.hits
                            c = hits.get(sig)
                            if c is None:
                                if len(hits) >= LEDGER_MAX:
                                    st.fold()
                                    hits = st.hits
                                hits[sig] = 1
                            else:
                                hits[sig] = c + 1
                            secs = _perf() - t0
                            d = st.duration
                            d.counts[0 if secs <= FIRST_TIME else bisect_left(d.bounds, secs)] += 1
                            d.sum += secs
                            return
                    looked = True
            if not ln.accepting:
                ln.dropped(data, None, False, v6)
                ln.drop("shutdown")
                return
            out, q, r = ln.scanning_path(data, addr, False, v6, t0, looked)
            if out is not None:
                self.transport.sendto(out, addr)  # type: ignore[union-attr]
            elif q is not None and r is not None:
                ln.slow_path(q, r, addr, self.writer, False, v6)
        except Exception:  # a bug on the hit path: SERVFAIL, counted, logged, still serving
            err = ln.panic(data, addr, False)
            if err is not None:
                self.transport.sendto(err, addr)  # type: ignore[union-attr]

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)
