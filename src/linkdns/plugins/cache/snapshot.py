"""``cache { snapshot FILE }``: the entries saved at stop (and before a hand-over), loaded at start.

File format, version 1 (little-endian)::

    header   magic b"LNKDSNAP" | version u16 | reserved u16 | count u32 | written f64
             | body length u64 | BLAKE2b-128 digest of the 32 bytes before it + body (48 bytes)
    body     count records: key length u16 | reply length u16 | TTL u32 | age f64 | key | reply

``written`` is the Unix time of the write (the cache's own clock is monotonic and does not
survive a restart); ``key`` the cache key (lowercased question + the DO/CD byte); ``reply``
the entry as a reply on the wire (header with ID 0, the question, the records; no OPT);
``TTL`` the entry's stored TTL; ``age`` the seconds it had been stored at the write.

Nothing is unpickled or evaluated. The loader checks the magic, the version, the lengths and
the digest first (a missing, truncated, corrupt or foreign file is logged and ignored as a
whole), then each record takes the path of a miss: a query rebuilt from the key and read back
by ``wire.scan_query`` (its key must be the record's), the reply by ``policy.parse_reply``, the
cache's checks and ``store.put`` (``Cache.restore``), with the TTL and the age carried over
(age + the wall time since the write). A record the current configuration would not store
(zone, ``disable``, ``no_negcache``, class off) is skipped; an entry expired past
``serve_stale``'s window is dropped.

The write is atomic: a temporary file in the same directory (O_EXCL, mode 0600), fsync,
rename over FILE, fsync of the directory. A writer that dies leaves FILE as it was (and a
``FILE.<pid>.tmp`` that nobody reads).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
import struct
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from linkdns import wire

if TYPE_CHECKING:
    from linkdns.plugins.cache.handler import Cache

log = logging.getLogger("linkdns.plugin.cache")

MAGIC = b"LNKDSNAP"
VERSION = 1
_HEAD = struct.Struct("<8sHHIdQ16s")
_REC = struct.Struct("<HHId")
#: a snapshot larger than this is not read (a cache of 10^5 entries writes ~20 MB)
MAX_BYTES = 512 << 20
#: stored times are shared per 1/64 s, as the cache's own stamps (handler.STAMP_TICKS)
_TICKS = 64

#: one saved entry: key, reply, TTL, age (seconds since it was stored)
Record = tuple[bytes, bytes, int, float]


class SnapshotError(Exception):
    """The snapshot file cannot be used (missing, truncated, corrupt, foreign)."""


def _digest(head: bytes | memoryview, body: bytes | memoryview) -> bytes:
    h = hashlib.blake2b(head, digest_size=16)
    h.update(body)
    return h.digest()


# -- entries <-> records --------------------------------------------------------------------


def records(cache: Cache, now: float) -> Iterator[Record]:
    """The cache's live entries as records: fresh ones, and expired ones still within
    ``serve_stale``'s window (a successor may serve them stale as this cache would)."""
    stale = cache.cfg.stale
    for key, e in cache.store.items():
        age = now - e.stored
        ttl = e.orig_ttl
        if ttl - int(age) <= 0 and (stale <= 0 or int(age) - ttl >= stale):
            continue
        h = e.head.plain  # header bytes 2-11 as the cache answers (flags, counts)
        flags = bytes((h[0], (h[1] & 0xDF) | (0x20 if e.ad else 0)))  # the upstream's AD
        yield key, b"\x00\x00" + flags + h[2:] + key[:-1] + e.rest, ttl, age


#: a query's header (ID 0, RD, QDCOUNT 1) by the key's DO/CD byte, and the OPT of a DO query
_QHEAD = tuple(bytes((0, 0, 1, 0x10 if f & 2 else 0, 0, 1, 0, 0, 0, 0, 0, f & 1))
               for f in range(4))
_DO_OPT = wire.make_opt(1232, True)


def query_for(key: bytes) -> wire.Query | None:
    """The query a cache key stands for, read back by ``scan_query``; None if the key is not
    one (its own key must come back unchanged)."""
    if len(key) < 6 or key[-1] > 3:
        return None
    flag = key[-1]
    data = _QHEAD[flag] + key[:-1] + (_DO_OPT if flag & 1 else b"")
    try:
        st, q = wire.scan_query(data)
    except (IndexError, struct.error):
        return None
    if st != 0 or q is None or q.key != key:
        return None
    return q


def restore(cache: Cache, recs: Iterable[Record], elapsed: float) -> tuple[int, int, int]:
    """Store ``recs`` in ``cache``, each ``elapsed`` seconds older than its saved age.
    Returns (restored, expired, skipped)."""
    now = cache.now()
    stale = cache.cfg.stale
    stamps: dict[float, float] = {}
    restored = expired = skipped = 0
    for key, reply, ttl, age in recs:
        age += elapsed
        left = ttl - int(age)
        if left <= 0 and (stale <= 0 or -left >= stale):
            expired += 1
            continue
        q = query_for(key)
        if q is None or not cache.covers(q):
            skipped += 1
            continue
        t = math.floor((now - age) * _TICKS) / _TICKS
        stored = stamps.setdefault(t, t)
        if cache.restore(q, reply, ttl, stored) is None:
            skipped += 1
        else:
            restored += 1
    return restored, expired, skipped


# -- the file -------------------------------------------------------------------------------


def encode(recs: Iterable[Record], written: float) -> bytes:
    parts: list[bytes] = []
    pack = _REC.pack
    n = 0
    for key, reply, ttl, age in recs:
        if len(key) > 0xFFFF or len(reply) > 0xFFFF:
            continue
        parts.append(pack(len(key), len(reply), ttl & 0xFFFFFFFF, age))
        parts.append(key)
        parts.append(reply)
        n += 1
    body = b"".join(parts)
    head = _HEAD.pack(MAGIC, VERSION, 0, n, written, len(body), b"")[: _HEAD.size - 16]
    return head + _digest(head, body) + body


def decode(data: bytes) -> tuple[float, list[Record]]:
    """(written, records) of a snapshot file's bytes; SnapshotError if it is not a complete,
    intact snapshot of this version."""
    if len(data) < _HEAD.size:
        raise SnapshotError(f"truncated ({len(data)} bytes, header is {_HEAD.size})")
    magic, version, _, count, written, blen, digest = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError("not a linkdns cache snapshot")
    if version != VERSION:
        raise SnapshotError(f"format version {version}, this linkdns reads {VERSION}")
    body = memoryview(data)[_HEAD.size :]
    if len(body) != blen:
        raise SnapshotError(f"truncated or padded (body {len(body)} bytes, header says {blen})")
    if _digest(memoryview(data)[: _HEAD.size - 16], body) != digest:
        raise SnapshotError("checksum mismatch")
    if not math.isfinite(written):
        raise SnapshotError("bad write time")
    out: list[Record] = []
    off = 0
    unpack = _REC.unpack_from
    rsize = _REC.size
    try:
        for _ in range(count):
            klen, rlen, ttl, age = unpack(body, off)
            off += rsize
            key = bytes(body[off : off + klen])
            off += klen
            reply = bytes(body[off : off + rlen])
            off += rlen
            if off > blen or not math.isfinite(age) or age < 0:
                raise SnapshotError("bad record")
            out.append((key, reply, ttl, age))
    except struct.error:
        raise SnapshotError("records run past the end") from None
    if off != blen:
        raise SnapshotError("bytes after the last record")
    return written, out


def read_file(path: str) -> bytes:
    """The file's bytes; SnapshotError if it is missing, too big or writable by others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise SnapshotError("no snapshot") from None
    except OSError as e:
        raise SnapshotError(e.strerror or str(e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SnapshotError("not a regular file")
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            raise SnapshotError("owned or writable by another user")
        if st.st_size > MAX_BYTES:
            raise SnapshotError(f"too big ({st.st_size} bytes)")
        chunks: list[bytes] = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise SnapshotError(e.strerror or str(e)) from None
    finally:
        os.close(fd)


def write_file(path: str, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (temporary file, fsync, rename, fsync dir)."""
    d = os.path.dirname(path) or "."
    os.makedirs(d, mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp)  # our own leftover (a pid reused after a crash)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- the plugin's side ----------------------------------------------------------------------


class Snapshot:
    """The snapshot of one cache: loaded at start, saved at stop and before a hand-over.

    In ``-workers N`` mode each worker has its own cache and its own file, ``FILE.<index>``.
    """

    def __init__(self, cache: Cache, path: str) -> None:
        self.cache = cache
        self.configured = path
        #: the file itself (``FILE.<index>`` in a worker: known at start, not when built)
        self.path = path
        #: set when the hand-over hook saved: the stop of this (old) instance must not
        #: overwrite what its successor may already have loaded and be saving in turn
        self.handed_over = False

    # lifecycle (called by Cache.start / Cache.stop)

    def start(self) -> None:
        """Load the entries (before the listeners open); register the hand-over hook."""
        env = self.cache.env
        worker = env.worker if env is not None else None
        if worker is not None:
            self.path = f"{self.configured}.{worker.index}"
        old = self._predecessor()
        if old is not None:  # a reload: take the running cache's entries, no file needed
            now = old.cache.now()
            n, m, k = restore(self.cache, list(records(old.cache, now)), 0.0)
            log.info("%s", f"carried {n} entries over the reload ({m} expired, {k} skipped)")
        else:
            self.load()
        if env is not None:
            hooks = env.handover_hooks
            if self.before_handover not in hooks:
                hooks.append(self.before_handover)

    def stop(self) -> None:
        """Save the entries, unless the hand-over hook did already and a successor took the
        sockets (it loaded the file, and will save in turn), or the server never started (a
        start that failed must not replace the file it only read)."""
        env = self.cache.env
        successor = self.handed_over
        if env is not None:
            hooks = env.handover_hooks
            if self.before_handover in hooks:
                hooks.remove(self.before_handover)
            if not env.started.is_set():
                return
            # False when the successor failed after the hook ran: this instance serves on
            successor = successor and env.handed_over
        if not successor:
            self.save()

    def before_handover(self) -> None:
        """The server is about to hand its sockets to a successor: save now, so the
        successor's start loads these entries."""
        self.save()
        self.handed_over = True

    # the work

    def load(self) -> tuple[int, int, int]:
        """Read the file and restore it; a file that cannot be used is logged and ignored."""
        t0 = time.perf_counter()
        try:
            written, recs = decode(read_file(self.path))
        except SnapshotError as e:
            if str(e) == "no snapshot":
                log.info("%s", f"no snapshot at {self.path}: starting empty")
            else:
                log.warning("%s", f"ignoring snapshot {self.path}: {e}")
            return 0, 0, 0
        elapsed = max(0.0, time.time() - written)
        try:
            n, m, k = restore(self.cache, recs, elapsed)
        except Exception:  # a bug, not a bad file: start empty rather than not at all
            log.exception("%s", f"restoring snapshot {self.path} failed; starting empty")
            store = self.cache.store
            for key, _ in store.items():
                store.remove(key)
            return 0, 0, 0
        log.info("%s", f"restored {n} entries from {self.path} ({m} expired, {k} skipped)"
                 f" in {(time.perf_counter() - t0) * 1000:.0f} ms, written {elapsed:.1f}s ago")
        return n, m, k

    def save(self) -> int:
        """Write the live entries; an error is logged, never raised. The number written."""
        t0 = time.perf_counter()
        cache = self.cache
        try:
            recs = list(records(cache, cache.now()))
            write_file(self.path, encode(recs, time.time()))
        except OSError as e:
            log.error("%s", f"writing snapshot {self.path}: {e}")
            return 0
        except Exception:  # never in the way of a stop or a hand-over
            log.exception("%s", f"writing snapshot {self.path} failed")
            return 0
        log.info("%s", f"saved {len(recs)} entries to {self.path}"
                 f" in {(time.perf_counter() - t0) * 1000:.0f} ms")
        return len(recs)

    def _predecessor(self) -> Snapshot | None:
        """On a reload, the running cache that saves to the same file (None at a start)."""
        env = self.cache.env
        if env is None or not env.started.is_set():
            return None
        for p in env.plugins():
            snap = getattr(p, "snapshot", None)
            if isinstance(snap, Snapshot) and p is not self.cache and snap.path == self.path:
                return snap
        return None
