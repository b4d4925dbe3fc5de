"""prometheus: serve /metrics (Prometheus text format) for the server and every plugin.

Setup-only: it starts an HTTP listener and stays out of the query chain. The server counts in
plain integers whatever the Corefile says; this directive exposes them (see linkdns.metrics)
together with everything plugins registered in ``env.registry``. Several blocks naming the
same address share one listener.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

import prometheus_client
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from linkdns import http, workers
from linkdns.corefile import Directive
from linkdns.plugin import Env, HTTPPlugin, PluginSpec, err, parse_addr, register

DEFAULT_ADDR = "localhost:9153"
PATH = "/metrics"


@dataclass(frozen=True)
class PrometheusConfig:
    host: str = "localhost"
    port: int = 9153


def parse(d: Directive) -> PrometheusConfig:
    host, port = parse_addr(d, DEFAULT_ADDR)
    for sub in d.block or []:
        if sub.name == "tls":
            raise err(d, "the 'tls' option is not supported; terminate TLS in front of linkdns")
        raise err(d, f"unknown option: {sub.name}")
    return PrometheusConfig(host, port)


def metrics_handler(env: Env) -> http.Handler:
    registry = env.registry

    async def handle(req: http.Request) -> http.Response:
        body = generate_latest(registry)
        worker = env.worker
        if worker is not None:  # -workers N: the sum over every worker
            body = await workers.gather(worker, body)
        if "gzip" in req.headers.get("accept-encoding", ""):
            return http.Response(200, gzip.compress(body, 6), CONTENT_TYPE_PLAIN_0_0_4,
                                 (("Content-Encoding", "gzip"),))
        return http.Response(200, body, CONTENT_TYPE_PLAIN_0_0_4)

    return handle


class Prometheus(HTTPPlugin):
    name = "prometheus"


def build(cfg: PrometheusConfig, env: Env) -> Prometheus:
    # CoreDNS's Go client has no *_created series; keep the exposition the same for the
    # prometheus-client metrics plugins register (a process-wide switch of the library).
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    env.expose_server_metrics()
    srv = env.http(cfg.host, cfg.port)
    srv.route(PATH, metrics_handler(env))
    return Prometheus(srv)


register(PluginSpec("prometheus", parse, build))
