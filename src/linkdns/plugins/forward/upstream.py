"""One upstream (a TO): its UDP and TCP/TLS transports, failure count and metric children."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from linkdns.plugins.forward.metrics import PROXY_NAME, ForwardMetrics
from linkdns.plugins.forward.setup import ForwardConfig, UpstreamSpec
from linkdns.plugins.forward.tcp import TcpPool
from linkdns.plugins.forward.transport import Question
from linkdns.plugins.forward.udp import UdpPool


class Upstream:
    """An upstream server. ``exchange`` sends one query and returns the validated reply bytes
    (with the upstream's random ID) or raises UpstreamError."""

    def __init__(self, spec: UpstreamSpec, cfg: ForwardConfig, metrics: ForwardMetrics,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        #: the clock connection ages are measured with (the server's: tests advance it)
        self.now = now
        self.cfg = cfg
        self.host = spec.host
        self.port = spec.port
        self.addr = spec.addr
        self.tls = spec.tls
        self.family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        self.sockaddr = (spec.host, spec.port)
        #: consecutive failures (exchanges and health probes); reset by any good reply
        self.fails = 0
        self.metrics = metrics
        #: per-query counters (plain ints, read at scrape time), shared per address
        self.stats = metrics.stats_for(self.addr)
        self.udp = UdpPool(self)
        self.tcp = TcpPool(self, cfg.ssl_context if spec.tls else None, cfg.tls_servername)
        self.hc_failures = metrics.healthcheck_failures.labels(PROXY_NAME, self.addr)

    def down(self) -> bool:
        """More than ``max_fails`` failures in a row (never, when max_fails is 0)."""
        mf = self.cfg.max_fails
        return mf > 0 and self.fails > mf

    async def exchange(self, query: bytes, q: Question, proto: str, timeout: float) -> bytes:
        """``proto`` is "udp" or "tcp"; a tls:// upstream always uses its TLS pool."""
        if proto == "tcp" or self.tls:
            return await self.tcp.exchange(query, q, timeout)
        return await self.udp.exchange(query, q, timeout)

    def count_conn(self, hit: bool, proto: str) -> None:
        self.stats.count_conn(hit, proto)

    def observe(self, rcode: int, seconds: float) -> None:
        self.stats.observe(rcode, seconds)

    def sweep(self, now: float) -> None:
        self.udp.sweep(now, self.cfg.expire)
        self.tcp.sweep(now)

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()

    def __repr__(self) -> str:
        return f"<Upstream {'tls://' if self.tls else ''}{self.addr} fails={self.fails}>"
