"""forward: send queries that miss the cache to upstream servers (CoreDNS's forward).

Layout: ``setup`` parses the directive, ``handler`` is the plugin, ``upstream`` one TO with
its ``udp`` and ``tcp`` transports (``transport`` holds what they share), ``health`` the
probes, ``policy`` the upstream order, ``metrics`` the Prometheus families.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from linkdns.plugin import PluginSpec, register
from linkdns.plugins.forward.handler import Forward
from linkdns.plugins.forward.setup import ForwardConfig, parse

if TYPE_CHECKING:
    from linkdns.plugin import Env

__all__ = ["Forward", "ForwardConfig", "parse"]


def build(cfg: ForwardConfig, env: Env) -> Forward:
    return Forward(cfg, env)


# Several forward lines may share a block: each is its own handler, chained in order.
register(PluginSpec("forward", parse, build, once=False))
