"""From parsed server blocks to site configurations: directive names, counts, zones, ports.

The parser knows syntax; this layer knows the plugin registry and the default port, so it
reports unknown directives, plugins used twice and zones defined twice, each with file:line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from linkdns import plugin
from linkdns.corefile import Directive, ServerBlock
from linkdns.errors import ConfigError


@dataclass
class SiteConfig:
    """One server block, validated: zones, port, and each plugin's parsed config."""

    zones: list[str]
    port: int
    block: ServerBlock
    #: plugin name -> parsed config (list of configs for plugins that may repeat)
    plugins: dict[str, Any] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return self.block.file

    @property
    def line(self) -> int:
        return self.block.line


def build_sites(blocks: list[ServerBlock], dns_port: int = 53) -> list[SiteConfig]:
    """Validate every block and parse each directive with its plugin. Raises ConfigError.

    All errors found are collected; the first is raised with the others attached as
    ``all`` so ``-validate`` can print them all.
    """
    plugin.load_builtin()
    errors: list[ConfigError] = []
    sites: list[SiteConfig] = []
    seen: dict[tuple[str, int], ServerBlock] = {}
    for b in blocks:
        port = None
        zones: list[str] = []
        for k in b.keys:
            p = k.port if k.port is not None else dns_port
            if port is not None and p != port:
                # CoreDNS groups keys by port; linkdns keeps one port per block for clarity.
                errors.append(ConfigError(
                    f"all keys of a server block must use one port ({port} and {p})",
                    b.file, b.line))
            port = p
            if (k.zone, p) in seen:
                errors.append(ConfigError(
                    f"cannot serve dns://{k.zone}:{p} - it is already defined", b.file, b.line))
            seen[(k.zone, p)] = b
            zones.append(k.zone)
        site = SiteConfig(zones=zones, port=port if port is not None else dns_port, block=b)
        by_name: dict[str, list[Directive]] = {}
        for d in b.directives:
            spec = plugin.REGISTRY.get(d.name)
            if spec is None:
                errors.append(ConfigError(f"Unknown directive '{d.name}'", d.file, d.line))
                continue
            if spec.once and d.name in by_name:
                errors.append(ConfigError(
                    f"plugin/{d.name}: this plugin can only be used once per Server Block",
                    d.file, d.line))
                continue
            by_name.setdefault(d.name, []).append(d)
        for name, ds in by_name.items():
            spec = plugin.REGISTRY[name]
            try:
                if spec.parse_all is not None:
                    site.plugins[name] = spec.parse_all(ds)
                elif spec.once:
                    site.plugins[name] = spec.parse(ds[0])
                else:
                    site.plugins[name] = [spec.parse(d) for d in ds]
            except ConfigError as e:
                errors.append(e)
        sites.append(site)
    for name, spec in plugin.REGISTRY.items():
        if spec.check_sites is not None:
            errors.extend(spec.check_sites([s.plugins[name] for s in sites if name in s.plugins]))
    if errors:
        first = errors[0]
        first.all = errors
        raise first
    return sites
