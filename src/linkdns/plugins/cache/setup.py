"""Parse the ``cache`` directive (CoreDNS 1.13 syntax plus ``no_negcache`` and ``aa``).

::

    cache [TTL] [ZONES...] {
        success CAPACITY [TTL [MINTTL]]
        denial  CAPACITY [TTL [MINTTL]]
        prefetch AMOUNT [DURATION [PERCENTAGE%]]
        serve_stale [DURATION [immediate|verify]]
        servfail DURATION
        disable success|denial [ZONES...]
        keepttl
        no_negcache
        aa keep|set|clear
        snapshot FILE
    }

``parse`` is pure: it turns a Directive into a :class:`CacheConfig` or raises ConfigError
naming the file and line of the offending (sub-)directive.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from linkdns.corefile import Directive
from linkdns.errors import ConfigError
from linkdns.plugin import Args

_A = Args("cache")

DEFAULT_CAP = 9984  # CoreDNS: 256 shards x 39
MAX_TTL = 3600
MAX_NTTL = 1800
MIN_TTL = 5
SERVFAIL_TTL = 5.0
SERVFAIL_MAX = 300.0  # RFC 2308 §7.1: SERVFAIL must not be cached longer than 5 minutes
STALE_DEFAULT = 3600.0
AA_POLICIES = ("keep", "set", "clear")


@dataclass
class ClassConfig:
    """Capacity and TTL bounds of one cache class (success or denial)."""

    cap: int
    max_ttl: int
    min_ttl: int = MIN_TTL


@dataclass
class CacheConfig:
    #: zones the cache covers; None = the server block's zones
    zones: list[str] | None = None
    success: ClassConfig = field(default_factory=lambda: ClassConfig(DEFAULT_CAP, MAX_TTL))
    denial: ClassConfig = field(default_factory=lambda: ClassConfig(DEFAULT_CAP, MAX_NTTL))
    prefetch: int = 0  # AMOUNT; 0 = off
    prefetch_window: float = 60.0  # DURATION
    prefetch_percentage: int = 10
    stale: float = 0.0  # serve_stale DURATION; 0 = off
    stale_verify: bool = False
    servfail: float = SERVFAIL_TTL
    #: zones where success / denial answers are not stored (None = nowhere)
    disable_success: list[str] | None = None
    disable_denial: list[str] | None = None
    keepttl: bool = False
    no_negcache: bool = False
    aa: str = "keep"
    #: ``snapshot FILE``: where the entries are saved at stop and loaded at start (None = off)
    snapshot: str | None = None
    #: file and line of the ``snapshot`` line (a second block using the same FILE names it)
    snapshot_at: tuple[str, int] = ("", 0)






def _int(d: Directive, text: str, what: str) -> int:
    return _A.integer(d, text, f"invalid {what} {text!r}: not an integer")


def _duration(d: Directive, text: str, what: str) -> float:
    return _A.duration(d, text, f"invalid {what} duration {text!r}")


def _class(d: Directive, cfg: ClassConfig) -> ClassConfig:
    """``success|denial CAPACITY [TTL [MINTTL]]``"""
    if not 1 <= len(d.args) <= 3:
        raise _A.argc(d)
    cap = _int(d, d.args[0], "capacity")
    if cap < 0:
        raise _A.err(d, f"cache capacity can not be negative: {cap}")
    out = ClassConfig(cap, cfg.max_ttl, cfg.min_ttl)
    if len(d.args) > 1:
        ttl = _int(d, d.args[1], "TTL")
        if ttl <= 0:
            raise _A.err(d, f"cache TTL can not be zero or negative: {ttl}")
        out.max_ttl = ttl
    if len(d.args) > 2:
        minttl = _int(d, d.args[2], "min TTL")
        if minttl < 0:
            raise _A.err(d, f"cache min TTL can not be negative: {minttl}")
        out.min_ttl = minttl
    return out


def _prefetch(d: Directive, cfg: CacheConfig) -> None:
    if not 1 <= len(d.args) <= 3:
        raise _A.argc(d)
    amount = _int(d, d.args[0], "prefetch amount")
    if amount < 0:
        raise _A.err(d, f"prefetch amount should be positive: {amount}")
    cfg.prefetch = amount
    if len(d.args) > 1:
        cfg.prefetch_window = _duration(d, d.args[1], "prefetch")
    if len(d.args) > 2:
        pct = d.args[2]
        if not pct.endswith("%"):
            raise _A.err(d, f"last character of percentage should be `%`, but is: {pct[-1]!r}")
        num = _int(d, pct[:-1], "percentage")
        if not 10 <= num <= 90:
            raise _A.err(d, f"percentage should fall in range [10, 90]: {num}")
        cfg.prefetch_percentage = num


def _serve_stale(d: Directive, cfg: CacheConfig) -> None:
    if len(d.args) > 2:
        raise _A.argc(d)
    cfg.stale = STALE_DEFAULT
    if d.args:
        cfg.stale = _duration(d, d.args[0], "serve_stale")
    cfg.stale_verify = False
    if len(d.args) > 1:
        mode = d.args[1].lower()
        if mode not in ("immediate", "verify"):
            raise _A.err(d, f"invalid value for serve_stale refresh mode: {d.args[1]}")
        cfg.stale_verify = mode == "verify"


def _servfail(d: Directive, cfg: CacheConfig) -> None:
    if len(d.args) != 1:
        raise _A.argc(d)
    ttl = _duration(d, d.args[0], "servfail")
    if ttl > SERVFAIL_MAX:
        raise _A.err(d, "caching SERVFAIL responses over 5 minutes is not permitted")
    cfg.servfail = ttl


def _disable(d: Directive, cfg: CacheConfig) -> None:
    if not d.args:
        raise _A.argc(d)
    kind = d.args[0]
    zones = _A.zones(d, d.args[1:]) if len(d.args) > 1 else ["."]
    if kind == "success":
        cfg.disable_success = zones
    elif kind == "denial":
        cfg.disable_denial = zones
    else:
        raise _A.err(d, 'cache type for disable must be "success" or "denial"')


def _flag(d: Directive) -> None:
    if d.args:
        raise _A.argc(d)


def parse(d: Directive) -> CacheConfig:
    cfg = CacheConfig()
    args = list(d.args)
    if args:
        try:
            ttl = int(args[0], 10)
        except ValueError:
            pass  # not a number: a zone
        else:
            if ttl <= 0:
                raise _A.err(d, f"cache TTL can not be zero or negative: {ttl}")
            cfg.success.max_ttl = ttl
            cfg.denial.max_ttl = ttl
            args = args[1:]
    if args:
        cfg.zones = _A.zones(d, args)
    for sub in d.block or []:
        if sub.block is not None:
            raise _A.err(sub, f"'{sub.name}' takes no block")
        name = sub.name
        if name == "success":
            cfg.success = _class(sub, cfg.success)
        elif name == "denial":
            cfg.denial = _class(sub, cfg.denial)
        elif name == "prefetch":
            _prefetch(sub, cfg)
        elif name == "serve_stale":
            _serve_stale(sub, cfg)
        elif name == "servfail":
            _servfail(sub, cfg)
        elif name == "disable":
            _disable(sub, cfg)
        elif name == "keepttl":
            _flag(sub)
            cfg.keepttl = True
        elif name == "no_negcache":
            _flag(sub)
            cfg.no_negcache = True
        elif name == "aa":
            if len(sub.args) != 1:
                raise _A.argc(sub)
            if sub.args[0] not in AA_POLICIES:
                raise _A.err(sub, f"aa must be one of keep, set, clear, not {sub.args[0]!r}")
            cfg.aa = sub.args[0]
        elif name == "snapshot":
            _snapshot(sub, cfg)
        else:
            raise _A.err(sub, f"unknown property '{name}'")
    return cfg


def _snapshot(d: Directive, cfg: CacheConfig) -> None:
    if len(d.args) != 1:
        raise _A.argc(d)
    path = d.args[0]
    if not os.path.isabs(path):
        raise _A.err(d, f"snapshot file must be an absolute path, not {path!r}")
    if path.endswith("/"):
        raise _A.err(d, f"snapshot file must name a file, not a directory: {path!r}")
    cfg.snapshot = os.path.normpath(path)
    cfg.snapshot_at = (d.file, d.line)


def check_sites(cfgs: list[CacheConfig]) -> list[ConfigError]:
    """Errors across server blocks: two caches may not share one snapshot FILE (each would
    overwrite the other's entries at stop)."""
    errors: list[ConfigError] = []
    first: dict[str, tuple[str, int]] = {}
    for c in cfgs:
        if c.snapshot is None:
            continue
        at = first.get(c.snapshot)
        if at is None:
            first[c.snapshot] = c.snapshot_at
        else:
            errors.append(ConfigError(
                f"snapshot file {c.snapshot} is already used by the cache at {at[0]}:{at[1]}; "
                "each server block needs its own file", *c.snapshot_at, "cache"))
    return errors
