"""Builds deploy/grafana/linkdns.json, the linkdns Grafana dashboard, with grafana-foundation-sdk.

Run ``python deploy/grafana/dashboard.py`` after editing (``--stdout`` prints instead);
tests/test_dashboard.py fails while linkdns.json differs from what this writes, and checks
that every metric and label the queries use is one a running linkdns exports.

Per node: the ``node`` variable is the host part of the scrape targets' ``instance`` (linkdns
runs with hostNetwork, so that is the node's IP); every query matches ``instance=~"$node:.*"``,
so the CoreDNS-style endpoint (:9253) and node-cache's own (:9353) both count.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

TARGET = Path(__file__).resolve().parent / "linkdns.json"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'instance=~"$node:.*"'
RATE = "[$__rate_interval]"


def q(expr: str, legend: str) -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).datasource(DS)


def panel(title: str, unit: str, description: str, *queries: Dataquery) -> Timeseries:
    p = (Timeseries().title(title).description(description).unit(unit).datasource(DS)
         .height(8).span(8).min(0).fill_opacity(10).line_width(1))
    for i, query in enumerate(queries):
        p = p.with_target(query.ref_id(chr(ord("A") + i)))
    return p


def rate(metric: str, by: str, extra: str = "") -> str:
    sel = f"{SEL}, {extra}" if extra else SEL
    return f"sum by ({by}) (rate({metric}{{{sel}}}{RATE}))"


def quantile(phi: float, metric: str, by: str = "") -> str:
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({phi}, {rate(metric + '_bucket', group)})"


def queries_row() -> list[Timeseries]:
    return [
        panel("Requests by type", "reqps", "coredns_dns_requests_total by query type",
              q(rate("coredns_dns_requests_total", "type"), "{{type}}")),
        panel("Responses by rcode", "reqps", "coredns_dns_responses_total by rcode",
              q(rate("coredns_dns_responses_total", "rcode"), "{{rcode}}")),
        panel("Request latency", "s",
              "Time from receiving a query to sending its reply (cache hits included)",
              *(q(quantile(phi, "coredns_dns_request_duration_seconds"), f"p{round(phi * 100)}")
                for phi in (0.5, 0.9, 0.99))),
        panel("Requests by node", "reqps", "Queries per node (scrape target host)",
              q(rate("coredns_dns_requests_total", "instance"), "{{instance}}")),
        panel("Queries in flight", "short",
              "Queries on the slow path (misses, forwarded) now; capped by -max-inflight",
              q(f"sum by (instance) (linkdns_queries_in_flight{{{SEL}}})", "{{instance}}")),
        panel("Dropped queries", "reqps",
              "Queries received and not answered at all, by reason (flood, tcp_limit, ...)",
              q(rate("linkdns_dropped_queries_total", "reason"), "{{reason}}")),
    ]


def cache_row() -> list[Timeseries]:
    hits = rate("coredns_cache_hits_total", "type")
    requests = f"sum(rate(coredns_cache_requests_total{{{SEL}}}{RATE}))"
    return [
        panel("Cache hit ratio by type", "percentunit",
              "Hits (success, denial) over all cache lookups",
              q(f"{hits} / ignoring (type) group_left {requests}", "{{type}}")),
        panel("Cache size", "short", "Entries in the cache by class",
              q(f"sum by (type) (coredns_cache_entries{{{SEL}}})", "{{type}}")),
        panel("Cache evictions", "ops", "Entries evicted to make room, by class",
              q(rate("coredns_cache_evictions_total", "type"), "{{type}}")),
    ]


def upstream_row() -> list[Timeseries]:
    return [
        panel("Upstream latency", "s", "Time each upstream exchange took, by upstream",
              q(quantile(0.5, "coredns_proxy_request_duration_seconds", "to"), "p50 {{to}}"),
              q(quantile(0.99, "coredns_proxy_request_duration_seconds", "to"), "p99 {{to}}")),
        panel("Upstream replies by rcode", "reqps", "Upstream exchanges by upstream and rcode",
              q(rate("coredns_proxy_request_duration_seconds_count", "to, rcode"),
                "{{to}} {{rcode}}")),
        panel("Upstream health", "ops",
              "Failed health checks by upstream (they run while it is down); 'all down': "
              "every upstream of a forward was unhealthy",
              q(rate("coredns_proxy_healthcheck_failures_total", "to"), "{{to}}"),
              q(f"sum(rate(coredns_forward_healthcheck_broken_total{{{SEL}}}{RATE}))",
                "all down")),
    ]


def setup_row() -> list[Timeseries]:
    return [
        panel("node-cache setup errors", "short",
              "Interface, iptables/ebtables, xtables lock and ConfigMap errors of node-local "
              "mode, by type (node-cache's metrics endpoint, :9353)",
              q(f"sum by (errortype) (increase(coredns_nodecache_setup_errors_total{{{SEL}}}"
                f"{RATE}))", "{{errortype}}")),
    ]


def build() -> Dashboard:
    node = (QueryVariable("node").label("node").datasource(DS)
            .query("label_values(coredns_build_info{goversion=~\"python.*\"}, instance)")
            .regex(r"/^(.*):\d+$/").multi(True).include_all(True)
            .current(VariableOption(selected=True, text="All", value="$__all"))
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC))
    d = (Dashboard("linkdns").uid("linkdns").tags(["linkdns", "dns", "kubernetes"])
         .description("linkdns, the node-local DNS cache: queries, cache, upstreams")
         .refresh("30s").time("now-1h", "now")
         .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
         .with_variable(node))
    for title, panels in (("Queries", queries_row()), ("Cache", cache_row()),
                          ("Upstreams", upstream_row()), ("Node setup", setup_row())):
        d = d.with_row(Row(title))
        for p in panels:
            d = d.with_panel(p)
    return d


def render() -> str:
    return json.dumps(json.loads(JSONEncoder().encode(build().build())), indent=2,
                      sort_keys=True) + "\n"


def main() -> None:
    text = render()
    if "--stdout" in sys.argv[1:]:
        sys.stdout.write(text)
    else:
        TARGET.write_text(text)


if __name__ == "__main__":
    main()
