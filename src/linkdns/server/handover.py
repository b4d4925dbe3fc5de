"""Hand-over: a successor takes the listening sockets over from a running instance.

Every instance serving with hand-over on listens on a control socket (a Unix
``SOCK_SEQPACKET`` socket whose path is derived from its listen addresses, see
:func:`default_path`). A new instance started with the same command line connects there
before it binds anything; both ends check the other's credentials (``SO_PEERCRED``: same
uid); the running instance runs its ``handover_hooks`` (e.g. the cache snapshot) and sends
every listening socket -- the DNS UDP and TCP sockets of every listener, the HTTP listeners
of health, ready and prometheus -- with ``SCM_RIGHTS``; the successor starts its plugins,
serves on those very sockets, takes the control path over (an atomic rename) and says
"serving"; the old instance marks itself :attr:`~linkdns.server.lifecycle.Server.handed_over`.

From then on both processes read the same sockets: the kernel never sees a port unbound and
keeps one queue per socket, which whichever process is left reads. When the old instance
then stops (SIGTERM) it stops reading, answers what it has in flight and exits; nothing that
was queued is lost. A start with no predecessor (no socket file, or a stale one left by a
SIGKILLed instance: ``ECONNREFUSED``) binds as before.

Messages are one JSON object per packet: ``hello`` (successor), ``sockets`` with the fds
attached (old; ``more`` when the fds need several packets), ``serving`` (successor), ``bye``
(old). See docs/availability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterable

from linkdns.server.handover_messages import (
    MAX_FDS,
    VERSION,
    HandoverError,
    Peer,
    check_peer,
    recv,
    send,
)

log = logging.getLogger("linkdns.handover")

HELLO_TIMEOUT = 10.0  # successor: for the sockets (the old instance runs its hooks first)
SERVING_TIMEOUT = 60.0  # old instance: for the successor to start its plugins and serve
BYE_TIMEOUT = 5.0
ATTEMPTS = 3  # a connection reset while another successor took over: try the path again
RUN_DIR = "/run/linkdns"

#: what a socket serves: ("dns", host, port) or ("http", host, port), as configured
Key = tuple[str, str, int]


# -- where ----------------------------------------------------------------------------------


def _usable(d: str, mode: int) -> bool:
    with contextlib.suppress(OSError):
        if not os.path.isdir(d):
            os.mkdir(d, mode)  # fails when the parent is missing or not ours to write
        return os.access(d, os.W_OK | os.X_OK)
    return False


def runtime_dir() -> str:
    """/run/linkdns when usable (the DaemonSet mounts it), else $XDG_RUNTIME_DIR/linkdns,
    else a private /tmp/linkdns-UID (mode 0700, ours, not a symlink)."""
    if _usable(RUN_DIR, 0o755):
        return RUN_DIR
    if os.path.isdir(RUN_DIR):  # there (a DaemonSet's hostPath) but not ours to write
        log.warning("hand-over: %s is not writable by uid %d: the control socket goes to a "
                    "directory another container will not see", RUN_DIR, os.geteuid())
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and _usable(os.path.join(xdg, "linkdns"), 0o700):
        return os.path.join(xdg, "linkdns")
    uid = os.geteuid()
    d = f"/tmp/linkdns-{uid}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(d, 0o700)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise HandoverError(f"{d} is not a private directory of uid {uid}")
    return d


def default_path(keys: Iterable[tuple[str, int]], worker: int | None = None) -> str | None:
    """The control socket of the instance serving these DNS (address, port) pairs in this
    network namespace (worker ``N`` of ``-workers``: its own). None when a port is 0: an
    ephemeral port is never "the same address" twice."""
    pairs = sorted(set(keys))
    if not pairs or any(p == 0 for _, p in pairs):
        return None
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        netns = 0
    text = ",".join(f"{h or '*'}:{p}" for h, p in pairs) + f"|net:{netns}"
    name = hashlib.sha256(text.encode()).hexdigest()[:16]
    if worker is not None:
        name += f".w{worker}"
    return os.path.join(runtime_dir(), name + ".sock")


# -- the successor's side -------------------------------------------------------------------


class Inherited:
    """Listening sockets received from the predecessor, by what they serve."""

    def __init__(self, socks: dict[Key, list[socket.socket]], pid: int) -> None:
        self.socks = socks
        self.pid = pid

    def __len__(self) -> int:
        return sum(len(v) for v in self.socks.values())

    def take(self, key: Key) -> list[socket.socket] | None:
        return self.socks.pop(key, None)

    def close(self, quiet: bool = False) -> None:
        """Close what nobody took (a listener the new configuration does not have)."""
        for key, socks in self.socks.items():
            if not quiet:
                log.info("not serving %s %s:%d any more (handed over, not configured)", *key)
            for s in socks:
                s.close()
        self.socks.clear()


class Predecessor:
    """The successor's connection to the instance it takes over from."""

    def __init__(self, sock: socket.socket, peer: Peer) -> None:
        self.sock = sock
        self.peer = peer

    @classmethod
    async def connect(cls, path: str) -> Predecessor | None:
        """Connect and check the peer; None when nobody listens there (no file, stale file)."""
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(s, path), HELLO_TIMEOUT)
            return cls(s, check_peer(s))
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            return None
        except TimeoutError:
            s.close()
            raise
        except OSError as e:  # not a socket, not ours to open: nobody to take over from
            s.close()
            log.warning("hand-over: cannot connect to %s: %s", path, e)
            return None
        except BaseException:
            s.close()
            raise

    async def receive(self) -> Inherited:
        await send(self.sock, {"version": VERSION, "op": "hello", "pid": os.getpid()})
        got: dict[Key, list[socket.socket]] = {}
        try:
            while True:
                msg, fds = await recv(self.sock, HELLO_TIMEOUT)
                keys = msg.get("keys")
                if msg.get("op") != "sockets" or not isinstance(keys, list) \
                        or len(keys) != len(fds):
                    for fd in fds:
                        os.close(fd)
                    raise HandoverError(f"expected sockets, got {msg.get('op')!r}")
                for k, fd in zip(keys, fds, strict=True):
                    key: Key = (str(k[0]), str(k[1]), int(k[2]))
                    got.setdefault(key, []).append(socket.socket(fileno=fd))
                if not msg.get("more"):
                    return Inherited(got, self.peer.pid)
        except BaseException:
            Inherited(got, self.peer.pid).close()
            raise

    async def serving(self) -> bool:
        """Tell the predecessor we serve; True once it acknowledged."""
        try:
            await send(self.sock, {"version": VERSION, "op": "serving", "pid": os.getpid()})
            msg, _ = await recv(self.sock, BYE_TIMEOUT)
            return msg.get("op") == "bye"
        except (OSError, HandoverError, TimeoutError) as e:
            log.warning("hand-over: pid %d did not acknowledge: %s", self.peer.pid, e)
            return False

    def close(self) -> None:
        self.sock.close()


async def take_over(path: str) -> tuple[Predecessor, Inherited] | None:
    """The predecessor at ``path`` and its sockets, or None when there is none."""
    for attempt in range(ATTEMPTS):
        try:
            pred = await Predecessor.connect(path)
        except HandoverError as e:
            log.error("hand-over: not taking over from %s: %s", path, e)
            return None  # bind as if nobody were there (and take the path over)
        if pred is None:
            return None
        try:
            inherited = await pred.receive()
        except (ConnectionError, HandoverError) as e:
            pred.close()
            if attempt == ATTEMPTS - 1:
                raise HandoverError(f"hand-over from {path} failed: {e}") from None
            log.warning("hand-over: %s; trying again", e)
            await asyncio.sleep(0.2)  # another successor may be taking over right now
            continue
        except BaseException:
            pred.close()
            raise
        log.info("hand-over: took %d listening socket(s) over from pid %d", len(inherited),
                 pred.peer.pid)
        return pred, inherited
    return None


# -- the running instance's side ------------------------------------------------------------


class Control:
    """The control socket of a serving instance: hands its sockets to one successor."""

    def __init__(self, path: str, sockets: Callable[[], list[tuple[Key, int]]],
                 hooks: list[Callable[[], None]],
                 handed_over: Callable[[Peer], None],
                 refuse: Callable[[], bool] = lambda: False,
                 gone: Callable[[Peer], None] | None = None) -> None:
        self.path = path
        self.sockets = sockets
        self.hooks = hooks
        self.handed_over = handed_over
        self.refuse = refuse
        #: called when the successor's connection closes (it stopped or died)
        self.gone = gone
        self.sock: socket.socket | None = None
        self.ident: tuple[int, int] | None = None
        self.task: asyncio.Task[None] | None = None

    def open(self) -> None:
        """Listen at ``path``: bound under a temporary name, then renamed over it (a stale
        file goes; a successor replaces its predecessor's path without a moment without)."""
        tmp = f"{self.path}.{os.getpid()}.tmp"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            s.bind(tmp)
            os.chmod(tmp, 0o600)
            s.listen(8)
            s.setblocking(False)
            os.rename(tmp, self.path)
        except BaseException:
            s.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        st = os.stat(self.path)
        self.ident = (st.st_dev, st.st_ino)
        self.sock = s
        self.task = asyncio.get_running_loop().create_task(self._accept())
        log.info("hand-over: control socket %s", self.path)

    async def _accept(self) -> None:
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            conn.setblocking(False)
            peer: Peer | None = None
            try:
                peer = await self._one(conn)
                if peer is not None:
                    break
            except (OSError, HandoverError, TimeoutError) as e:
                log.warning("hand-over refused or broken off: %s", e)
            finally:
                if peer is None:
                    conn.close()
        self._close_listener()  # handed over: the path is the successor's now
        try:
            # The successor keeps this connection open while it serves: its end closing
            # (a stop, a crash, SIGKILL) is the moment this instance may serve again.
            while True:
                try:
                    await recv(conn, 3600.0)
                except TimeoutError:
                    continue
        except (OSError, HandoverError):
            pass
        finally:
            conn.close()
        if self.gone is not None:
            self.gone(peer)

    async def _one(self, conn: socket.socket) -> Peer | None:
        peer = check_peer(conn)
        msg, _ = await recv(conn, HELLO_TIMEOUT)
        if msg.get("op") != "hello":
            raise HandoverError(f"expected hello, got {msg.get('op')!r}")
        if self.refuse():
            raise HandoverError(f"pid {peer.pid}: this instance is stopping")
        log.info("hand-over: pid %d takes over", peer.pid)
        for hook in list(self.hooks):
            try:
                hook()
            except Exception:
                log.exception("hand-over hook failed")
        socks = self.sockets()
        for i in range(0, max(len(socks), 1), MAX_FDS):
            part = socks[i : i + MAX_FDS]
            await send(conn, {"version": VERSION, "op": "sockets",
                              "keys": [list(k) for k, _ in part],
                              "more": i + MAX_FDS < len(socks)}, [fd for _, fd in part])
        msg, _ = await recv(conn, SERVING_TIMEOUT)
        if msg.get("op") != "serving":
            raise HandoverError(f"expected serving, got {msg.get('op')!r}")
        self.handed_over(peer)
        await send(conn, {"version": VERSION, "op": "bye", "pid": os.getpid()})
        return peer

    def _close_listener(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def close(self) -> None:
        """Stop listening; remove the path if it is still ours (not a successor's)."""
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self._close_listener()
        if self.ident is not None:
            with contextlib.suppress(OSError):
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self.ident:
                    os.unlink(self.path)
            self.ident = None
