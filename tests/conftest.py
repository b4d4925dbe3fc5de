"""Fixtures shared by the test modules: scriptable upstreams on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakeupstream import FakeUpstream


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    """A FakeUpstream (default: A 192.0.2.1 TTL 60 for any name); set ``up.handler``."""
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def up2() -> Iterator[FakeUpstream]:
    """A second, independent FakeUpstream (failover, policies)."""
    with FakeUpstream() as server:
        yield server
