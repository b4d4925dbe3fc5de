"""cache: Corefile parsing (pure, no server): defaults, every option, errors with file:line."""

from __future__ import annotations

import pytest

from linkdns.corefile import parse_corefile
from linkdns.errors import ConfigError
from linkdns.plugins.cache.setup import CacheConfig, parse


def cfg(text: str) -> CacheConfig:
    block = parse_corefile(f"example.org {{\n    {text}\n}}\n", "Corefile")[0]
    (d,) = [d for d in block.directives if d.name == "cache"]
    return parse(d)


def test_defaults_are_coredns_defaults() -> None:
    c = cfg("cache")
    assert c.zones is None
    assert (c.success.cap, c.success.max_ttl, c.success.min_ttl) == (9984, 3600, 5)
    assert (c.denial.cap, c.denial.max_ttl, c.denial.min_ttl) == (9984, 1800, 5)
    assert (c.prefetch, c.prefetch_window, c.prefetch_percentage) == (0, 60.0, 10)
    assert (c.stale, c.stale_verify, c.servfail) == (0.0, False, 5.0)
    assert (c.keepttl, c.no_negcache, c.aa) == (False, False, "keep")
    assert c.disable_success is None and c.disable_denial is None


def test_ttl_argument_caps_both_classes_and_zones_follow() -> None:
    c = cfg("cache 30 Example.ORG sub.example.net.")
    assert c.success.max_ttl == 30 and c.denial.max_ttl == 30
    assert c.zones == ["example.org.", "sub.example.net."]


def test_first_argument_that_is_not_a_number_is_a_zone() -> None:
    assert cfg("cache example.org").zones == ["example.org."]


def test_full_block() -> None:
    c = cfg("""cache 300 {
        success 5000 600 10
        denial 0 60 1
        prefetch 3 30s 20%
        serve_stale 2h verify
        servfail 10s
        disable success internal.example.org
        disable denial
        keepttl
        no_negcache
        aa set
    }""")
    assert (c.success.cap, c.success.max_ttl, c.success.min_ttl) == (5000, 600, 10)
    assert (c.denial.cap, c.denial.max_ttl, c.denial.min_ttl) == (0, 60, 1)
    assert (c.prefetch, c.prefetch_window, c.prefetch_percentage) == (3, 30.0, 20)
    assert (c.stale, c.stale_verify, c.servfail) == (7200.0, True, 10.0)
    assert c.disable_success == ["internal.example.org."]
    assert c.disable_denial == ["."]
    assert (c.keepttl, c.no_negcache, c.aa) == (True, True, "set")


@pytest.mark.parametrize(
    ("line", "want"),
    [
        pytest.param("serve_stale", (3600.0, False), id="default-1h-immediate"),
        pytest.param("serve_stale 10m", (600.0, False), id="duration"),
        pytest.param("serve_stale 1h IMMEDIATE", (3600.0, False), id="mode-case-insensitive"),
        pytest.param("serve_stale 0s verify", (0.0, True), id="zero-verify"),
    ],
)
def test_serve_stale_forms(line: str, want: tuple[float, bool]) -> None:
    c = cfg(f"cache {{\n {line}\n }}")
    assert (c.stale, c.stale_verify) == want


def test_servfail_zero_disables() -> None:
    assert cfg("cache {\n servfail 0\n }").servfail == 0.0


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        pytest.param("cache 0", 2, "can not be zero or negative: 0", id="ttl-zero"),
        pytest.param("cache -5", 2, "can not be zero or negative: -5", id="ttl-negative"),
        pytest.param("cache {\n success\n }", 3, "Wrong argument count", id="success-no-args"),
        pytest.param("cache {\n success x\n }", 3, "invalid capacity", id="capacity-not-int"),
        pytest.param("cache {\n success -1\n }", 3, "can not be negative", id="capacity-neg"),
        pytest.param("cache {\n denial 10 0\n }", 3, "zero or negative: 0", id="denial-ttl-0"),
        pytest.param("cache {\n denial 10 60 -1\n }", 3, "min TTL can not be negative",
                     id="minttl-negative"),
        pytest.param("cache {\n success 1 2 3 4\n }", 3, "Wrong argument count",
                     id="success-too-many"),
        pytest.param("cache {\n prefetch\n }", 3, "Wrong argument count", id="prefetch-none"),
        pytest.param("cache {\n prefetch -1\n }", 3, "should be positive", id="prefetch-neg"),
        pytest.param("cache {\n prefetch 1 1m 10\n }", 3, "should be `%`", id="pct-no-sign"),
        pytest.param("cache {\n prefetch 1 1m 95%\n }", 3, "range [10, 90]: 95", id="pct-high"),
        pytest.param("cache {\n prefetch 1 1m 5%\n }", 3, "range [10, 90]: 5", id="pct-low"),
        pytest.param("cache {\n prefetch 1 soon\n }", 3, "invalid prefetch duration",
                     id="prefetch-duration"),
        pytest.param("cache {\n serve_stale 1h later\n }", 3, "refresh mode: later",
                     id="stale-mode"),
        pytest.param("cache {\n serve_stale 1h verify x\n }", 3, "Wrong argument count",
                     id="stale-too-many"),
        pytest.param("cache {\n servfail\n }", 3, "Wrong argument count", id="servfail-none"),
        pytest.param("cache {\n servfail 6m\n }", 3, "over 5 minutes", id="servfail-over-5m"),
        pytest.param("cache {\n disable\n }", 3, "Wrong argument count", id="disable-none"),
        pytest.param("cache {\n disable errors\n }", 3, '"success" or "denial"',
                     id="disable-kind"),
        pytest.param("cache {\n keepttl 1\n }", 3, "Wrong argument count", id="keepttl-arg"),
        pytest.param("cache {\n no_negcache yes\n }", 3, "Wrong argument count",
                     id="no-negcache-arg"),
        pytest.param("cache {\n aa maybe\n }", 3, "keep, set, clear", id="aa-value"),
        pytest.param("cache {\n aa\n }", 3, "Wrong argument count", id="aa-none"),
        pytest.param("cache {\n bogus 1\n }", 3, "unknown property 'bogus'", id="unknown"),
    ],
)
def test_errors_name_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as ei:
        cfg(text)
    e = ei.value
    assert (e.file, e.line, e.plugin) == ("Corefile", line, "cache")
    assert fragment in str(e)
    assert str(e).startswith(f"Corefile:{line} - plugin/cache: ")


def test_cache_is_once_per_block() -> None:
    from linkdns.config import build_sites

    blocks = parse_corefile("example.org {\n cache\n cache 10\n}\n", "Corefile")
    with pytest.raises(ConfigError, match="only be used once"):
        build_sites(blocks)
