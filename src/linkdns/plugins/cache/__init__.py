"""cache: the node-local answer cache (CoreDNS's cache plugin, with a raw-bytes hit path).

See docs/plugins/cache.md. ``setup`` parses the directive, ``store`` holds entries and evicts,
``policy`` decides what is stored and renders entries on the slow path, ``handler`` serves
(hit path + slow path + refreshes), ``metrics`` exposes the counters to Prometheus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from linkdns.plugin import PluginSpec, register
from linkdns.plugins.cache.handler import Cache
from linkdns.plugins.cache.setup import CacheConfig, check_sites, parse

if TYPE_CHECKING:
    from linkdns.plugin import Env

__all__ = ["Cache", "CacheConfig", "parse"]


def build(cfg: CacheConfig, env: Env) -> Cache:
    return Cache(cfg, env)


register(PluginSpec("cache", parse, build, check_sites=check_sites))
