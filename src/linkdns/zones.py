"""Zone membership, worked out once: is a name at or below one of a set of zones?

Plugins ask it of a query's name in wire form (:meth:`ZoneSet.covers`, one set lookup per
label of the name, the offsets ``wire.scan_query`` already found) or of a name as text
(:func:`in_zones`, :func:`zone_match`: CoreDNS's ``plugin.Zones.Matches``). The listeners'
routing (server/frontdoor.py) maps a name to its longest zone with the same walk.
"""

from __future__ import annotations

from collections.abc import Iterable

from linkdns.wire import Query, text_to_name


class ZoneSet:
    """Zones (lowercase FQDNs), kept as wire names."""

    __slots__ = ("names", "root")

    def __init__(self, zones: Iterable[str]) -> None:
        self.names = frozenset(text_to_name(z) for z in zones)
        #: the root is among them: every name is covered
        self.root = b"\x00" in self.names

    def __bool__(self) -> bool:
        return bool(self.names)

    def covers(self, q: Query) -> bool:
        """Is the query's name at or below one of the zones?"""
        if self.root:
            return True
        name = q.qname_lower
        names = self.names
        return any(name[off:] in names for off in q.labels)

    def covers_name(self, zone: str) -> bool:
        """Is ``zone`` (a lowercase FQDN) at or below one of the zones?"""
        name = text_to_name(zone)
        off = 0
        while True:
            if name[off:] in self.names:
                return True
            if name[off] == 0:
                return False
            off += name[off] + 1


def zone_match(name: str, zones: Iterable[str]) -> str:
    """The longest of ``zones`` (lowercase FQDNs) that ``name`` is at or below, "" if none
    (CoreDNS's plugin.Zones.Matches)."""
    best = ""
    for z in zones:
        if (z == "." or name == z or name.endswith("." + z)) and len(z) > len(best):
            best = z
    return best


def in_zones(name: str, zones: Iterable[str]) -> bool:
    """True when ``name`` is one of ``zones`` or below one of them."""
    return any(z == "." or name == z or name.endswith("." + z) for z in zones)
