"""The node setup belongs to the node: a lock file tells an instance whether others serve.

Every instance in node-local mode holds a shared ``flock`` on one lock file for its lifetime
(the file is per interface name and network namespace; Kubernetes pods share it through a
``hostPath`` under ``/run``). At exit it asks for the exclusive lock without waiting: granted
means no other instance holds the file, so this one is the last one out and tears down;
refused means another instance serves on and the setup stays. The kernel drops the lock of a
SIGKILLed process by itself, so its leftovers are adopted by the next start and removed by
the last stop.

The exclusive lock is kept through teardown: an instance starting meanwhile waits for its
shared lock until teardown is over, then sets up afresh. A second file serialises the
networking passes (set up, put back) of the instances alive, so two of them never both
insert a rule that is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator

log = logging.getLogger("linkdns.nodelocal")

LOCK_DIR = "/run/linkdns"


def default_path(interface: str) -> str:
    """``/run/linkdns/nodelocal-IFACE-NETNS.lock``: NETNS is the network namespace's inode,
    the same for every process on the host's network (hostNetwork pods included)."""
    try:
        netns = str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        netns = "host"
    return os.path.join(LOCK_DIR, f"nodelocal-{interface}-{netns}.lock")


class NodeLock:
    """The shared lock of one instance; without a usable lock file, a sole owner."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def __repr__(self) -> str:
        return f"<NodeLock {self.path} {'held' if self.fd is not None else 'not held'}>"

    def _open(self, path: str) -> int:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def acquire(self, timeout: float = 60.0) -> bool:
        """Take the shared lock, waiting up to ``timeout`` s for a teardown in progress.
        False (logged) when the file cannot be used: this instance then acts alone."""
        try:
            fd = self._open(self.path)
        except OSError as e:
            log.error("nodelocal: cannot open lock file %s (%s): acting as the only instance",
                      self.path, e.strerror)
            return False
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    log.error("nodelocal: %s still locked by a teardown after %gs: acting as "
                              "the only instance", self.path, timeout)
                    return False
                if not waited:
                    log.info("Waiting for another instance to finish tearing down (%s)",
                             self.path)
                    waited = True
                time.sleep(0.05)
        self.fd = fd
        return True

    def last_out(self) -> bool:
        """At exit: True when no other instance holds the lock (then held exclusively until
        :meth:`release`, so no instance starts during teardown)."""
        if self.fd is None:
            return True
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @contextlib.contextmanager
    def networking(self) -> Iterator[None]:
        """One networking pass at a time across the instances on the node."""
        try:
            fd = self._open(self.path + ".setup")
        except OSError:
            yield  # no lock file at all: nothing to serialise with
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
