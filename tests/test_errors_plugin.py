"""errors: CoreDNS-format error lines for failed queries, and consolidation."""

from __future__ import annotations

import logging
import time

import dns.rcode
import pytest
from harness import Running
from test_forward import dead_port

from linkdns.cli import CoreDNSFormatter


def corefile(errors_block: str = "") -> str:
    return f"""
    .:0 {{
        bind 127.0.0.1
        errors {errors_block}
        forward . 127.0.0.1:{dead_port()} {{
            read_timeout 200ms
            max_fails 0
        }}
    }}
    """


def errors_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    fmt = CoreDNSFormatter()
    return [fmt.format(r) for r in caplog.records if r.name == "linkdns.plugin.errors"]


def test_failed_forward_is_logged_in_coredns_format(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="linkdns")
    with Running(corefile()) as srv:
        assert srv.query("fail.example.org.", "AAAA").rcode() == dns.rcode.SERVFAIL
    lines = errors_lines(caplog)
    assert len(lines) == 1
    assert lines[0].startswith("[ERROR] plugin/errors: 2 fail.example.org. AAAA: ")


def wait_for_lines(caplog: pytest.LogCaptureFixture, n: int, timeout: float = 5) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(lines := errors_lines(caplog)) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    return lines


def test_consolidate_counts_matching_errors_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="linkdns")
    block = '{\n consolidate 500ms ".*" warning\n }'
    with Running(corefile(block)) as srv:
        # The 500 ms windows tick from the server's start, so three errors sent at a random
        # moment could straddle two windows. One error first: its line marks a window's start.
        assert srv.query("f0.example.org.", "A").rcode() == dns.rcode.SERVFAIL
        assert len(wait_for_lines(caplog, 1)) == 1
        for i in range(1, 4):
            assert srv.query(f"f{i}.example.org.", "A").rcode() == dns.rcode.SERVFAIL
        lines = wait_for_lines(caplog, 2)
    assert lines == ["[WARNING] plugin/errors: 1 errors like '.*' occurred in last 500ms",
                     "[WARNING] plugin/errors: 3 errors like '.*' occurred in last 500ms"]
