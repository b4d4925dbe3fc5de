"""node-cache's own metrics: ``coredns_nodecache_setup_errors_total{errortype}``.

Served on ``-metrics-listen-address`` (default ``0.0.0.0:9353``) by a small threaded HTTP
server, as node-cache's cmd/node-cache/app/metrics.go does; the same counter is also added to
the prometheus plugin's registry (node-cache's two endpoints share Go's default registry).
The counts live in a shared anonymous mapping, so with ``-workers`` the worker that answers a
scrape of the prometheus plugin reads what the parent (which does the node setup) counted.
"""

from __future__ import annotations

import http.server
import logging
import mmap
import socket
import struct
import threading
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from linkdns import values

log = logging.getLogger("linkdns.nodelocal")

#: node-cache's errortype values, pre-set to 0 (registerMetrics)
ERRORTYPES = ("iptables", "iptables_lock", "interface_add", "interface_check", "configmap")


class SetupErrors(Collector):
    """The counter, one 8-byte slot per errortype in memory shared with forked workers."""

    def __init__(self, errortypes: Sequence[str] = ERRORTYPES) -> None:
        self.errortypes = tuple(errortypes)
        self._mem = mmap.mmap(-1, 8 * len(self.errortypes))
        self._lock = threading.Lock()

    def inc(self, errortype: str) -> None:
        i = self.errortypes.index(errortype)
        with self._lock:
            (n,) = struct.unpack_from("q", self._mem, 8 * i)
            struct.pack_into("q", self._mem, 8 * i, n + 1)

    def get(self, errortype: str) -> int:
        value: int = struct.unpack_from("q", self._mem, 8 * self.errortypes.index(errortype))[0]
        return value

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily("coredns_nodecache_setup_errors",
                                  "The number of errors during periodic network setup for "
                                  "node-cache", labels=["errortype"])
        for t in self.errortypes:
            fam.add_metric([t], float(self.get(t)))
        yield fam


def parse_address(text: str) -> tuple[str, int]:
    """Go's ``host:port`` (``0.0.0.0:9353``, ``[::1]:9353``, ``:9353``); ValueError if bad."""
    try:
        host, port = values.split_host_port(text)
    except ValueError:
        raise ValueError(f"bad address {text!r}") from None
    return host or "0.0.0.0", port


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        # An overlapping successor binds the same address (and a scrape reaches one of them).
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class MetricsEndpoint:
    """``GET /metrics`` on one address, in a thread; :meth:`close` stops it."""

    def __init__(self, address: str, registry: CollectorRegistry) -> None:
        self.address = address
        self.registry = registry
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> bool:
        """Listen; False (logged, as node-cache does) when it cannot."""
        registry = self.registry

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        try:
            host, port = parse_address(self.address)
            cls = type("Server", (_Server,), {"address_family": _family(host)})
            self.server = cls((host, port), Handler)
        except (OSError, ValueError) as e:
            log.error("Failed to start metrics handler: %s", e)
            return False
        self.thread = threading.Thread(target=self.server.serve_forever, name="nodecache-metrics",
                                       daemon=True)
        self.thread.start()
        return True

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.server_address[1]
        return port

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
