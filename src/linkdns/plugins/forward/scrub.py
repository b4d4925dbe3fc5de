"""Scrub an upstream reply before it is cached or answered (as unbound's iterator/iter_scrub.c).

One walk of the reply both checks that it reads as a DNS message (what ``transport.parses``
checks) and decides, record by record, what the upstream had any business sending:

* **answer**: only records owned by the question's name and by the CNAME chain that starts
  there, in order: a CNAME (or a DNAME above the current name) moves the chain on; any other
  record must be of the question's type (any type for ANY) at the current chain name. RRSIGs
  are kept at a chain name when they cover the question's type, CNAME or DNAME.
* **authority**: an SOA or NS whose owner is the question's name or the chain's last name or
  one of their ancestors (the zone that answered); no NS in a denial (NXDOMAIN, or NODATA with
  an SOA: unbound drops those too). DS, NSEC, NSEC3 and RRSIG (DNSSEC proofs) only at or below
  that zone (the SOA's, else the NS's, else the forward's FROM zone).
* **additional**: the OPT and a TSIG; A/AAAA (and their RRSIGs) only for a name an NS, MX,
  SRV, KX or SVCB/HTTPS record that was kept points to, and within that record's bailiwick
  (the NS owner for a referral's glue, the forward's FROM zone for the answer's targets).
* records of another class than IN go.

The clean reply (the common case) is returned as the very same object: nothing is copied or
re-parsed. When something must go, the message is rebuilt from the kept records; names in
records after the first removed one are written uncompressed (their compression pointers may
point into what was removed).
"""

from __future__ import annotations

from typing import Final

from linkdns import wire
from linkdns.errors import WireError

T_DNAME: Final = 39
T_DS: Final = 43
T_RRSIG: Final = 46
T_NSEC: Final = 47
T_NSEC3: Final = 50
T_TSIG: Final = wire.T_TSIG
#: record types in authority that are DNSSEC proofs of the zone's data
_PROOFS: Final = frozenset((T_DS, T_NSEC, T_NSEC3, T_RRSIG))
#: types whose RDATA points to a name that may have addresses in additional: type -> offset
_TARGET_AT: Final = {wire.T_NS: 0, 3: 0, 4: 0, 7: 0, wire.T_MX: 2, 36: 2, wire.T_SRV: 6,
                     64: 2, 65: 2}
#: types whose RDATA holds (possibly compressed) names: type -> (offsets/'n' for a name)
#: as a tuple of fixed-byte counts and names: ("n",) one name, (2, "n") u16 then a name...
_NAMED: Final[dict[int, tuple[int | str, ...]]] = {
    wire.T_NS: ("n",), 3: ("n",), 4: ("n",), wire.T_CNAME: ("n",), 7: ("n",), 8: ("n",),
    9: ("n",), wire.T_PTR: ("n",), T_DNAME: ("n",), wire.T_SOA: ("n", "n", 20),
    14: ("n", "n"), 17: ("n", "n"), wire.T_MX: (2, "n"), 18: (2, "n"), 21: (2, "n"),
    36: (2, "n"), wire.T_SRV: (6, "n"), 26: (2, "n", "n"),
}

Names = dict[int, bytes]


def read_name(data: bytes, off: int, names: Names) -> tuple[bytes, int] | None:
    """The lowercased, uncompressed wire name at ``off`` and the offset just past it in place;
    None if it is not a valid name (out of bounds, a bad label type, over 255 bytes, or a
    compression pointer that does not point before the labels it ends: so no loop). ``names``
    memoizes names by the offset they were read at: a pointer to a name read before (a CNAME
    target, the question) costs a dict lookup. A speed copy of ``wire.skip_name`` that follows
    pointers: where it reads a name, skip_name ends at the same offset; where skip_name fails,
    so does it (tests/test_name_walkers.py)."""
    n = len(data)
    start = pos = off
    end = -1
    segs: list[bytes] = []
    while True:
        if pos >= n:
            return None
        ln = data[pos]
        if ln < 0x40:
            if ln:
                pos += ln + 1
                continue
            segs.append(data[start : pos + 1])
            if end < 0:
                end = pos + 1
            break
        if ln < 0xC0 or pos + 1 >= n:
            return None
        ptr = ((ln & 0x3F) << 8) | data[pos + 1]
        if ptr >= start:
            return None
        if end < 0:
            end = pos + 2
        segs.append(data[start:pos])
        known = names.get(ptr)
        if known is not None:
            segs.append(known)
            break
        start = pos = ptr
    name = (segs[0] if len(segs) == 1 else b"".join(segs)).lower()
    if len(name) > 255:
        return None
    names[off] = name
    return name, end


def under(name: bytes, zone: bytes) -> bool:
    """Is ``name`` equal to ``zone`` or below it (lowercased wire names)?"""
    if zone == b"\x00" or name == zone:
        return True
    if len(name) <= len(zone):
        return False
    off = 0
    while name[off]:
        off += name[off] + 1
        if name[off:] == zone:
            return True
    return False


def scrub(data: bytes, lname: bytes, qtype: int, zone: bytes = b"\x00") -> bytes | None:
    """``data`` itself when it is clean, a rebuilt message without the records that must go,
    or None when it does not read as a DNS message (exactly one question at offset 12 is
    assumed: the caller checked QDCOUNT; ``lname`` is that question's lowercased name)."""
    n = len(data)
    if n < wire.HEADER_LEN:
        return None
    an = (data[6] << 8) | data[7]
    ns = (data[8] << 8) | data[9]
    ar = (data[10] << 8) | data[11]
    off = wire.HEADER_LEN
    # The question (compared with ours by the caller): the reference walker bounds it.
    try:
        off = wire.skip_name(data, off) + 4
    except WireError:
        return None
    if off > n:
        return None
    names: Names = {wire.HEADER_LEN: lname}  # owners point to the question's name
    sname = lname
    chain = {lname}  # owners whose RRSIGs may stay in the answer
    drop: list[int] | None = None
    kept_answers = 0
    targets: list[tuple[int, int, int, bytes]] = []  # (type, rdata, rdlen, bailiwick)
    later: list[tuple[int, int, int, int, int]] = []  # (section, start, type, rdata, rdlen)
    section = 0
    left = an
    for _ in range(an + ns + ar):
        while not left:
            section += 1
            left = ns if section == 1 else ar
        left -= 1
        start = off
        if off >= n:
            return None
        b = data[off]
        if b >= 0xC0:
            if off + 2 > n:
                return None
            owner = names.get(((b & 0x3F) << 8) | data[off + 1])
            if owner is None:
                r = read_name(data, off, names)
                if r is None:
                    return None
                owner = r[0]
            off += 2
        elif b == 0 and section:
            owner = b"\x00"
            off += 1
        else:
            r = read_name(data, off, names)
            if r is None:
                return None
            owner, off = r
        if off + 10 > n:
            return None
        t = (data[off] << 8) | data[off + 1]
        cls = (data[off + 2] << 8) | data[off + 3]
        rdlen = (data[off + 8] << 8) | data[off + 9]
        rd = off + 10
        off = rd + rdlen
        if off > n:
            return None
        if section:
            if t == wire.T_OPT and section == 2:
                continue
            if cls != wire.C_IN and not (t == T_TSIG and section == 2):
                drop = _drop(drop, start)
                continue
            later.append((section, start, t, rd, rdlen))
            continue
        # The answer section: follow the chain.
        if cls != wire.C_IN:
            drop = _drop(drop, start)
            continue
        if owner == sname and (t == qtype or qtype == wire.T_ANY):
            kept_answers += 1
            if t in _TARGET_AT:
                targets.append((t, rd, rdlen, zone))
            if t == wire.T_CNAME and qtype == wire.T_ANY:
                r = read_name(data, rd, names)
                if r is None or r[1] != off:
                    return None
                sname = r[0]
                chain.add(sname)
            continue
        if t == wire.T_CNAME and owner == sname:
            r = read_name(data, rd, names)
            if r is None or r[1] != off:
                return None
            sname = r[0]
            chain.add(sname)
            kept_answers += 1
            continue
        if t == T_DNAME and owner != sname and under(sname, owner):
            chain.add(owner)
            kept_answers += 1
            continue
        if t == T_RRSIG and rdlen >= 2 and owner in chain:
            covered = (data[rd] << 8) | data[rd + 1]
            if covered in (qtype, wire.T_CNAME, T_DNAME) or qtype == wire.T_ANY:
                kept_answers += 1
                continue
        drop = _drop(drop, start)
    if off != n:
        return None
    if later:
        drop = _scrub_later(data, later, names, drop, (lname, sname), kept_answers,
                            targets, zone)
        if drop is _MALFORMED:
            return None
    if drop is None:
        return data
    return rebuild(data, set(drop))


_MALFORMED: Final[list[int]] = [-1]


def _drop(drop: list[int] | None, start: int) -> list[int]:
    if drop is None:
        return [start]
    drop.append(start)
    return drop


def _scrub_later(data: bytes, later: list[tuple[int, int, int, int, int]], names: Names,
                 drop: list[int] | None, chain_ends: tuple[bytes, bytes], kept_answers: int,
                 targets: list[tuple[int, int, int, bytes]], zone: bytes) -> list[int] | None:
    """Decide the authority and additional records (``_MALFORMED`` on an unreadable name)."""
    rcode = data[3] & 0x0F
    owners: list[bytes] = []
    for _, start, _, _, _ in later:
        r = read_name(data, start, names)
        if r is None:
            return _MALFORMED
        owners.append(r[0])
    qname, last = chain_ends

    def pertinent(owner: bytes) -> bool:  # the zone that answered: an ancestor of the names
        return under(last, owner) or under(qname, owner)

    soa_zone = None
    ns_zone = None
    for (section, _, t, _, _), owner in zip(later, owners, strict=True):
        if section == 1 and t == wire.T_SOA and soa_zone is None and pertinent(owner):
            soa_zone = owner
    denial = rcode == wire.NXDOMAIN or (kept_answers == 0 and soa_zone is not None)
    keep_auth: set[int] = set()
    for i, ((section, _, t, rd, rdlen), owner) in enumerate(zip(later, owners, strict=True)):
        if section != 1:
            continue
        if t == wire.T_SOA:
            ok = pertinent(owner)
        elif t == wire.T_NS:
            ok = not denial and pertinent(owner) and (ns_zone is None or owner == ns_zone)
            if ok:
                ns_zone = owner
                targets.append((t, rd, rdlen, owner))
        else:
            ok = False
        if ok:
            keep_auth.add(i)
    proof_zone = soa_zone or ns_zone or zone
    glue: set[bytes] = set()
    for t, rd, rdlen, bailiwick in targets:
        at = _TARGET_AT[t]
        if rdlen <= at:
            continue
        r = read_name(data, rd + at, names)
        if r is None:
            return _MALFORMED
        target = r[0]
        if target == b"\x00" and t in (64, 65):
            continue  # SVCB/HTTPS "." is the owner itself: its addresses are in the answer
        if under(target, bailiwick):
            glue.add(target)
    for i, ((section, start, t, rd, rdlen), owner) in enumerate(
            zip(later, owners, strict=True)):
        if section == 1:
            ok = i in keep_auth or (t in _PROOFS and under(owner, proof_zone) and (
                t != T_RRSIG or _covers(data, rd, rdlen, _AUTH_SIGNED)))
        else:
            ok = t == T_TSIG or (owner in glue and (t in _ADDRESSES or (
                t == T_RRSIG and _covers(data, rd, rdlen, _ADDRESSES))))
        if not ok:
            drop = _drop(drop, start)
    return drop


_AUTH_SIGNED: Final = frozenset((wire.T_SOA, wire.T_NS, T_DS, T_NSEC, T_NSEC3))
_ADDRESSES: Final = frozenset((wire.T_A, wire.T_AAAA))


def _covers(data: bytes, rd: int, rdlen: int, types: frozenset[int]) -> bool:
    """Does the RRSIG whose RDATA starts at ``rd`` cover one of ``types``?"""
    return rdlen >= 2 and ((data[rd] << 8) | data[rd + 1]) in types


def rebuild(data: bytes, drop: set[int]) -> bytes | None:
    """``data`` without the records starting at the offsets in ``drop``. Records before the
    first removed one are copied as they are; later ones get their names uncompressed."""
    names: Names = {}
    counts = [(data[6] << 8) | data[7], (data[8] << 8) | data[9], (data[10] << 8) | data[11]]
    off = wire.HEADER_LEN
    r = read_name(data, off, names)
    if r is None:
        return None
    q_end = r[1] + 4
    out = bytearray(data[:q_end])
    kept = [0, 0, 0]
    cut = False
    off = q_end
    for section in range(3):
        for _ in range(counts[section]):
            start = off
            r = read_name(data, off, names)
            if r is None:
                return None
            owner, off = r
            t = (data[off] << 8) | data[off + 1]
            rdlen = (data[off + 8] << 8) | data[off + 9]
            rd = off + 10
            end = rd + rdlen
            off = end
            if start in drop:
                cut = True
                continue
            kept[section] += 1
            if not cut:
                out += data[start:end]
                continue
            rdata = _plain_rdata(data, t, rd, end, names)
            if rdata is None:
                return None
            out += owner
            out += data[rd - 10 : rd - 2]
            out += len(rdata).to_bytes(2, "big")
            out += rdata
    for i, c in enumerate(kept):
        out[6 + 2 * i : 8 + 2 * i] = c.to_bytes(2, "big")
    return bytes(out)


def _plain_rdata(data: bytes, t: int, rd: int, end: int, names: Names) -> bytes | None:
    """The RDATA of a record with its names uncompressed (as it is for other types)."""
    layout = _NAMED.get(t)
    if layout is None:
        return data[rd:end]
    out = bytearray()
    p = rd
    for part in layout:
        if part == "n":
            r = read_name(data, p, names)
            if r is None or r[1] > end:
                return None
            out += r[0]
            p = r[1]
        else:
            assert isinstance(part, int)
            out += data[p : p + part]
            p += part
    if p > end:
        return None
    out += data[p:end]
    return bytes(out)
