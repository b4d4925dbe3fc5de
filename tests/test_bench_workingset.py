"""bench/workingset.py writes what it says: distinct shapes, A/AAAA, the clients' own OPTs."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from linkdns import wire
from linkdns.server.frontdoor import opt_shape

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import workingset as ws


def read(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, off = [], 0
    while off < len(data):
        (n,) = struct.unpack_from(">H", data, off)
        out.append(data[off + 2 : off + 2 + n])
        off += 2 + n
    return out


@pytest.mark.parametrize("name", ["ws1k", "ws10k-noedns"])
def test_files_hold_distinct_shuffled_shapes_in_the_clients_forms(tmp_path: Path,
                                                                  name: str) -> None:
    path, count = ws.write(name, tmp_path)
    msgs = read(path)
    assert len(msgs) == count == ws.size_of(name)
    assert len({m[2:] for m in msgs}) == count  # distinct shapes (the ID is dnsperf's)
    forms: dict[tuple[int, bool, int], int] = {}
    types: dict[int, int] = {}
    for m in msgs:
        st, q = wire.scan_query(m)
        assert st == 0 and q is not None and q.flags & wire.RD
        types[q.qtype] = types.get(q.qtype, 0) + 1
        form = (q.udp_size if q.has_opt else 0, q.do, len(m) - q.q_end)
        forms[form] = forms.get(form, 0) + 1
        if q.has_opt:
            assert opt_shape(m[q.q_end :]) is not None  # the hit path reads them in place
    assert types == {wire.T_A: count // 2, wire.T_AAAA: count // 2}
    if ws.edns(name):
        # Go: 1232, no DO, no option; systemd-resolved: 1472, DO, DAU/DHU/N3U (23 bytes)
        assert forms == {(1232, False, 11): count // 2, (1472, True, 34): count // 2}
    else:
        assert forms == {(0, False, 0): count}
    # shuffled: not in the order they were generated
    names = [wire.scan_query(m)[1].name for m in msgs[:50]]  # type: ignore[union-attr]
    assert names != sorted(names)
