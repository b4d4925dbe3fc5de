"""cache { snapshot FILE }: entries saved at stop, loaded at start, over real sockets.

Two linkdns servers one after the other in this process (same Corefile, same FILE) in front of
a FakeUpstream. After the restart the upstream answers another address (or nothing), so an
answer with the first address can only come from the snapshot. The time between the two is
made up by rewriting the file's write time (the file's own format, digest recomputed).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest
from fakeupstream import Drop, FakeUpstream, a_records, nodata, nxdomain
from harness import Running

from linkdns.config import build_sites
from linkdns.corefile import parse_corefile
from linkdns.errors import ConfigError
from linkdns.plugins.cache import snapshot
from linkdns.plugins.cache.handler import Cache

FIRST = "192.0.2.1"
LATER = "198.51.100.7"


@pytest.fixture
def cache_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The cache plugin's log lines (its logger may not propagate after a CLI test)."""
    lg = logging.getLogger("linkdns.plugin.cache")
    lg.addHandler(caplog.handler)
    old = lg.level
    lg.setLevel(logging.INFO)
    try:
        yield caplog
    finally:
        lg.removeHandler(caplog.handler)
        lg.setLevel(old)


def corefile(up: FakeUpstream, path: Path, opts: str = "", zones: str = "") -> str:
    return (f".:0 {{\n bind 127.0.0.1\n cache {zones} {{\n  snapshot {path}\n  {opts}\n }}\n"
            f" forward . {up.addr}\n}}\n")


def fill(up: FakeUpstream, conf: str, names: list[str], *, ttl: int = 60) -> None:
    """A first server: ask every name (the upstream answers FIRST), stop (saves)."""
    up.handler = lambda q, proto: a_records(q, 1, ttl, first=FIRST)
    with Running(conf) as srv:
        for n in names:
            assert srv.query(n).rcode() == dns.rcode.NOERROR
    up.reset()


def age_file(path: Path, seconds: float) -> None:
    """Pretend the snapshot was written ``seconds`` earlier."""
    written, recs = snapshot.decode(path.read_bytes())
    path.write_bytes(snapshot.encode(recs, written - seconds))


def addr(m: dns.message.Message) -> str:
    return str(m.answer[0][0]) if m.answer else ""


def test_a_restart_answers_from_the_snapshot_with_ttls_reduced(
        up: FakeUpstream, tmp_path: Path, cache_log: pytest.LogCaptureFixture) -> None:
    snap = tmp_path / "cache.snap"
    conf = corefile(up, snap)
    names = [f"n{i}.example.org." for i in range(20)]
    fill(up, conf, names, ttl=300)
    assert snap.exists()
    age_file(snap, 100)
    up.handler = lambda q, proto: Drop()
    with Running(conf) as srv:
        for n in names:
            r = srv.query(n, timeout=2)
            assert addr(r) == FIRST
            assert 199 <= r.answer[0].ttl <= 200
    assert up.queries == []
    assert f"restored 20 entries from {snap} (0 expired, 0 skipped)" in cache_log.text


def test_every_kind_of_entry_comes_back_as_it_was(up: FakeUpstream, tmp_path: Path) -> None:
    """Answers, NXDOMAIN, NODATA, a DO and a CD entry: the same reply bytes (but the ID)."""
    snap = tmp_path / "cache.snap"
    conf = corefile(up, snap)

    def upstream(q: dns.message.Message, proto: str) -> dns.message.Message:
        name = q.question[0].name.to_text()
        if name.startswith("nx."):
            return nxdomain(q, 120, 120)
        if name.startswith("nodata."):
            return nodata(q, 120, 120)
        return a_records(q, 2, 120, first=FIRST)

    asks: list[tuple[str, str, dict[str, object]]] = [
        ("a.example.org.", "A", {}),
        ("nx.example.org.", "A", {}),
        ("nodata.example.org.", "AAAA", {}),
        ("do.example.org.", "A", {"want_dnssec": True}),
        ("cd.example.org.", "A", {"flags": 0x0110}),  # RD + CD
    ]
    up.handler = upstream
    before = []
    with Running(conf) as srv:
        for name, t, kw in asks:
            srv.query(name, t, **kw)  # type: ignore[arg-type]
            before.append(srv.query(name, t, **kw))  # type: ignore[arg-type]
    up.reset()
    up.handler = lambda q, proto: Drop()
    with Running(conf) as srv:
        for (name, t, kw), old in zip(asks, before, strict=True):
            new = srv.query(name, t, timeout=2, **kw)  # type: ignore[arg-type]
            new.id = old.id
            assert new.flags == old.flags and new.rcode() == old.rcode(), name
            assert new.answer == old.answer and new.authority == old.authority, name
            assert new.edns == old.edns and new.ednsflags == old.ednsflags, name
    assert up.queries == []


@pytest.mark.parametrize("stale", [
    pytest.param("", id="dropped-without-serve_stale"),
    pytest.param("serve_stale 1h", id="kept-stale-within-serve_stale"),
])
def test_entries_that_expired_meanwhile(up: FakeUpstream, tmp_path: Path, stale: str,
                                        cache_log: pytest.LogCaptureFixture) -> None:
    snap = tmp_path / "cache.snap"
    conf = corefile(up, snap, stale)
    fill(up, conf, ["old.example.org."], ttl=30)
    age_file(snap, 100)
    up.handler = lambda q, proto: a_records(q, 1, 30, first=LATER)
    with Running(conf) as srv:
        r = srv.query("old.example.org.")
        if stale:  # served stale (TTL 0) at once, refreshed in the background
            assert addr(r) == FIRST and r.answer[0].ttl == 0
            assert "restored 1 entries" in cache_log.text
        else:
            assert addr(r) == LATER
            assert "restored 0 entries" in cache_log.text and "(1 expired, 0 skipped)" in \
                cache_log.text
    assert len(up.queries) == 1


def _bad_version(data: bytes) -> bytes:
    """The same snapshot with another format version (and a digest that matches it)."""
    written, recs = snapshot.decode(data)
    good = snapshot.encode(recs, written)
    head = bytearray(good[: snapshot._HEAD.size - 16])
    struct.pack_into("<H", head, 8, snapshot.VERSION + 1)
    body = good[snapshot._HEAD.size :]
    return bytes(head) + snapshot._digest(bytes(head), body) + body


def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    b[-3] ^= 0x40
    return bytes(b)


@pytest.mark.parametrize(("spoil", "why"), [
    pytest.param(None, "no snapshot", id="missing"),
    pytest.param(lambda d: b"", "truncated", id="empty"),
    pytest.param(lambda d: d[:30], "truncated", id="truncated-header"),
    pytest.param(lambda d: d[:-10], "truncated", id="truncated-body"),
    pytest.param(_flip, "checksum mismatch", id="corrupt"),
    pytest.param(lambda d: b"GARBAGE!" + d[8:], "not a linkdns cache snapshot", id="foreign"),
    pytest.param(_bad_version, "format version 2", id="other-version"),
])
def test_an_unusable_snapshot_is_logged_and_ignored(
        up: FakeUpstream, tmp_path: Path, spoil: object, why: str,
        cache_log: pytest.LogCaptureFixture) -> None:
    snap = tmp_path / "cache.snap"
    conf = corefile(up, snap)
    fill(up, conf, ["x.example.org."])
    if spoil is None:
        snap.unlink()
    else:
        snap.write_bytes(spoil(snap.read_bytes()))  # type: ignore[operator]
    up.handler = lambda q, proto: a_records(q, 1, 60, first=LATER)
    with Running(conf) as srv:  # starts all the same
        assert addr(srv.query("x.example.org.")) == LATER  # never served from the file
    assert len(up.queries) == 1
    assert why in cache_log.text and str(snap) in cache_log.text


def test_a_file_others_may_write_is_not_loaded(
        up: FakeUpstream, tmp_path: Path, cache_log: pytest.LogCaptureFixture) -> None:
    snap = tmp_path / "cache.snap"
    conf = corefile(up, snap)
    fill(up, conf, ["x.example.org."])
    snap.chmod(0o666)
    up.handler = lambda q, proto: a_records(q, 1, 60, first=LATER)
    with Running(conf) as srv:
        assert addr(srv.query("x.example.org.")) == LATER
    assert "writable by another user" in cache_log.text


def test_the_file_is_replaced_atomically(up: FakeUpstream, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that fails (here: fsync) leaves the old file whole and no temporary file;
    a temporary file left by a writer that died is not read."""
    snap = tmp_path / "cache.snap"
    conf = corefile(up, snap)
    fill(up, conf, ["a.example.org."])
    good = snap.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    up.handler = lambda q, proto: a_records(q, 1, 60, first=FIRST)
    with Running(conf) as srv:
        srv.query("b.example.org.")
        monkeypatch.setattr(os, "fsync", broken_fsync)
        srv.stop()  # the save fails: logged, the stop goes on
    monkeypatch.undo()
    assert snap.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.snap"]
    # a dead writer's leftover beside a good file
    (tmp_path / f"cache.snap.{os.getpid() + 1}.tmp").write_bytes(good[:50])
    up.reset()
    up.handler = lambda q, proto: Drop()
    with Running(conf) as srv:
        assert addr(srv.query("a.example.org.", timeout=2)) == FIRST
    assert up.queries == []


@pytest.mark.parametrize("taken", [
    pytest.param(True, id="successor-serves"),
    pytest.param(False, id="successor-failed"),
])
def test_the_hand_over_hook_saves_and_the_stop_after_it_only_if_still_serving(
        up: FakeUpstream, tmp_path: Path, taken: bool) -> None:
    """The hook saves; the old instance's stop then saves again only when no successor took
    the sockets (it went on serving, so its entries are the newest)."""
    snap = tmp_path / "cache.snap"
    conf = corefile(up, snap)
    with Running(conf) as srv:
        srv.query("a.example.org.")
        hooks = srv.server.handover_hooks
        assert len(hooks) == 1
        srv.run(lambda: [h() for h in hooks])  # what the old instance runs before handing over
        srv.server.handed_over = taken  # what the hand-over says happened
        srv.query("b.example.org.")
    _, recs = snapshot.decode(snap.read_bytes())
    saved = sorted(r[0][:3] for r in recs)
    assert saved == ([b"\x01a\x07"] if taken else [b"\x01a\x07", b"\x01b\x07"])


def test_a_reload_carries_the_entries_over(up: FakeUpstream, tmp_path: Path) -> None:
    snap = tmp_path / "cache.snap"
    conf = corefile(up, snap)
    with Running(conf) as srv:
        srv.query("a.example.org.")
        up.handler = lambda q, proto: a_records(q, 1, 60, first=LATER)
        srv.call(srv.server.reload(build_sites(parse_corefile(conf, "Corefile"), 0)))
        assert addr(srv.query("a.example.org.")) == FIRST
        caches = [h for s in srv.server.sites for h in s.handlers if isinstance(h, Cache)]
        assert len(caches) == 1 and len(caches[0].store) == 1
    assert len(up.queries) == 1


def test_entries_the_new_configuration_would_not_store_are_skipped(
        up: FakeUpstream, tmp_path: Path, cache_log: pytest.LogCaptureFixture) -> None:
    snap = tmp_path / "cache.snap"
    fill(up, corefile(up, snap), ["a.example.org.", "b.example.net."])
    up.handler = lambda q, proto: a_records(q, 1, 60, first=LATER)
    with Running(corefile(up, snap, zones="example.org")) as srv:
        assert addr(srv.query("a.example.org.")) == FIRST
        assert addr(srv.query("b.example.net.")) == LATER
    assert "restored 1 entries" in cache_log.text and "(0 expired, 1 skipped)" in cache_log.text


def test_two_blocks_may_not_share_a_file(tmp_path: Path) -> None:
    text = (f"a.example:53 {{\n cache {{\n  snapshot {tmp_path}/c.snap\n }}\n}}\n"
            f"b.example:53 {{\n cache {{\n  snapshot {tmp_path}/c.snap\n }}\n}}\n"
            f"c.example:53 {{\n cache {{\n  snapshot {tmp_path}/other.snap\n }}\n}}\n")
    with pytest.raises(ConfigError) as ei:
        build_sites(parse_corefile(text, "Corefile"))
    e = ei.value
    assert (e.file, e.line, e.plugin) == ("Corefile", 8, "cache")
    assert "already used by the cache at Corefile:3" in str(e)
    assert len(e.all) == 1


@pytest.mark.parametrize(("line", "msg"), [
    pytest.param("snapshot", "Wrong argument count", id="no-file"),
    pytest.param("snapshot /a /b", "Wrong argument count", id="two-files"),
    pytest.param("snapshot cache.snap", "must be an absolute path", id="relative"),
])
def test_snapshot_option_errors(line: str, msg: str) -> None:
    with pytest.raises(ConfigError) as ei:
        build_sites(parse_corefile(f".:53 {{\n cache {{\n  {line}\n }}\n}}\n", "Corefile"))
    assert (ei.value.file, ei.value.line) == ("Corefile", 3)
    assert msg in str(ei.value)


def test_store_items_lists_entries_in_storing_order_as_a_copy() -> None:
    from linkdns import wire
    from linkdns.plugins.cache.store import SUCCESS, Entry, Store

    s = Store(4, 4)
    keys = [wire.text_to_name(f"{n}.example.") + b"\x00\x01\x00\x01\x00" for n in "bca"]
    for k in keys:
        data = wire.make_query(k[:-5], 1, 0)
        s.put(k, Entry(data, (), 0.0, 5, SUCCESS, False, False, False, False))
    items = s.items()
    assert [k for k, _ in items] == keys
    s.remove(keys[0])
    assert len(items) == 3 and [k for k, _ in s.items()] == keys[1:]


def test_a_failure_while_restoring_starts_empty_not_never(
        up: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        cache_log: pytest.LogCaptureFixture) -> None:
    snap = tmp_path / "cache.snap"
    conf = corefile(up, snap)
    fill(up, conf, ["a.example.org.", "b.example.org."])
    real = Cache.restore
    calls = []

    def flaky(self: Cache, *a: object) -> object:
        calls.append(a)
        if len(calls) == 2:
            raise RuntimeError("a bug")
        return real(self, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(Cache, "restore", flaky)
    up.handler = lambda q, proto: a_records(q, 1, 60, first=LATER)
    with Running(conf) as srv:
        assert addr(srv.query("a.example.org.")) == LATER  # the one restored was dropped
    assert "starting empty" in cache_log.text and len(calls) == 2
