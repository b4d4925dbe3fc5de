"""One reference name walker, ``wire.skip_name``, and the speed copies pinned against it: the
query scan's question loop, forward's ``transport.parses`` (against ``replies.walk``, which
calls skip_name) and ``scrub.read_name``. Each property fails when a copy drifts: a name one
accepts and the other rejects, or a different end offset."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from linkdns import replies, wire
from linkdns.errors import WireError
from linkdns.plugins.cache.store import name_end
from linkdns.plugins.forward.scrub import read_name
from linkdns.plugins.forward.transport import parses


def skip(data: bytes, off: int) -> int | None:
    try:
        return wire.skip_name(data, off)
    except WireError:
        return None


def walks(data: bytes) -> bool:
    try:
        replies.walk(data)
    except WireError:
        return False
    return True


def plain(k: int) -> bytes:
    return bytes((k,)) + b"a" * k


# A label: plain (lengths at the bounds more often), a compression pointer, a bad label type.
label = st.one_of(
    st.sampled_from([1, 2, 62, 63]).map(plain),
    st.integers(1, 63).map(plain),
    st.tuples(st.integers(0xC0, 0xFF), st.integers(0, 255)).map(bytes),
    st.integers(0x40, 0xBF).map(lambda b: bytes((b,))),
)
# Names around the 255-byte bound: runs of one kind of label, a few other labels, a root.
names = st.builds(
    lambda k, size, rest: plain(size) * k + b"".join(rest) + b"\x00",
    st.integers(0, 130), st.sampled_from([1, 2, 63]), st.lists(label, max_size=4))


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` cut short, with bytes changed or added, or as it is."""
    d = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.integers(0, 2))
        if op == 0 and d:
            d[draw(st.integers(0, len(d) - 1))] = draw(st.integers(0, 255))
        elif op == 1 and d:
            del d[draw(st.integers(0, len(d) - 1)):]
        else:
            d.append(draw(st.integers(0, 255)))
    return bytes(d)


@pytest.mark.parametrize(("name", "end"), [
    pytest.param(b"\x00", 1, id="root"),
    pytest.param(plain(63) * 3 + plain(61) + b"\x00", 255, id="255-bytes"),
    pytest.param(plain(63) * 3 + plain(62) + b"\x00", None, id="256-bytes"),
    pytest.param(plain(1) * 127 + b"\x00", 255, id="127-labels"),
    pytest.param(plain(1) * 128 + b"\x00", None, id="128-labels"),
    pytest.param(plain(63) * 3 + plain(61) + b"\xc0\x00", 256, id="254-in-place-then-pointer"),
    pytest.param(plain(63) * 3 + plain(62) + b"\xc0\x00", None, id="255-in-place-then-pointer"),
    pytest.param(b"\xc0\x00", 2, id="pointer-to-itself-not-followed"),
    pytest.param(b"\x03ab", None, id="label-past-the-end"),
    pytest.param(b"\x01a\xc0", None, id="pointer-cut-short"),
    pytest.param(b"\x01a\x40\x00", None, id="label-type-01"),
    pytest.param(b"\x80\x00", None, id="label-type-10"),
])
def test_skip_name_is_bounded(name: bytes, end: int | None) -> None:
    assert skip(name, 0) == end


@settings(max_examples=400, deadline=None)
@given(name=st.one_of(mutated(names), st.binary(max_size=300)), qtype=st.binary(
    min_size=4, max_size=4))
@example(name=plain(63) * 3 + plain(62) + b"\x00", qtype=b"\x00\x01\x00\x01")
def test_query_scan_walks_as_skip_name(name: bytes, qtype: bytes) -> None:
    """The question loop of ``wire.scan_query`` (plain labels only) and the cache's
    ``store.name_end`` (a question read already) against skip_name."""
    data = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + qtype
    st_, q = wire.scan_query(data)
    assert q is not None
    end = skip(data, wire.HEADER_LEN)
    read = q.qname_end != 0
    if read:  # the scan read the name: skip_name reads it too, to the same end
        assert end == q.qname_end == name_end(data)
    if not any(b >= 0xC0 for b in name):  # no pointer can be in it: the same verdict
        assert read == (end is not None and end + 4 <= len(data))
    if end is not None and end + 4 == len(data) and not any(b >= 0xC0 for b in name):
        assert st_ in (0, wire.REFUSED)


def message(parts: list[tuple[bytes, bytes]], counts: tuple[int, int, int, int]) -> bytes:
    head = b"\x00\x01\x81\x80" + b"".join(c.to_bytes(2, "big") for c in counts)
    return head + b"".join(n + rest for n, rest in parts)


rr_tail = st.one_of(
    st.just(b"\x00\x01\x00\x01"),
    st.binary(min_size=0, max_size=6).map(
        lambda rd: b"\x00\x01\x00\x01\x00\x00\x0e\x10" + len(rd).to_bytes(2, "big") + rd),
    st.binary(max_size=14),
)
messages = st.builds(
    message,
    st.lists(st.tuples(st.one_of(names, st.just(b"\xc0\x0c")), rr_tail), max_size=4),
    st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 1), st.integers(0, 1)))


@settings(max_examples=600, deadline=None)
@given(data=st.one_of(mutated(messages), messages, st.binary(max_size=80)))
@example(data=message([(plain(63) * 3 + plain(62) + b"\x00", b"\x00\x01\x00\x01")],
                      (1, 0, 0, 0)))
@example(data=message([(b"\x00", b"\x00\x01\x00\x01"), (plain(63) * 3 + plain(62) + b"\xc0\x0c",
                       b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x00")], (1, 1, 0, 0)))
def test_parses_accepts_what_walk_accepts(data: bytes) -> None:
    """forward's ``parses``, an inline copy of ``replies.walk`` and its skip_name."""
    assert parses(data) == walks(data)


@settings(max_examples=600, deadline=None)
@given(data=st.one_of(mutated(names), st.binary(max_size=300)),
       prefix=st.binary(max_size=20))
@example(data=plain(63) * 3 + plain(62) + b"\xc0\x00", prefix=b"\x00")
@example(data=b"\xc0\x00", prefix=b"")
def test_read_name_ends_where_skip_name_does(data: bytes, prefix: bytes) -> None:
    """scrub's ``read_name`` follows pointers (backwards only) and reads at most 255 bytes:
    where it reads a name, skip_name ends at the same offset; where skip_name fails, it does."""
    buf = prefix + data
    off = len(prefix)
    end = skip(buf, off)
    r = read_name(buf, off, {})
    if r is not None:
        assert r[1] == end
        assert len(r[0]) <= 255
    if end is None:
        assert r is None
