"""The node lock (nodelocal/shared.py) on its own: shared while serving, exclusive for the
last one out, a teardown in progress waited for. Separate opens of the file are separate
holders, as separate processes are (flock locks belong to the open file)."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from linkdns.nodelocal.shared import NodeLock


def test_only_the_last_holder_gets_the_exclusive_lock(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "node.lock")  # the directory is created
    a, b = NodeLock(path), NodeLock(path)
    assert a.acquire() and b.acquire()
    assert a.last_out() is False  # b serves on
    a.release()
    assert b.last_out() is True
    c = NodeLock(path)
    assert c.acquire(timeout=0.2) is False  # b holds it exclusively: its teardown runs
    b.release()
    assert c.acquire(timeout=0.2) is True
    c.release()


def test_a_start_waits_for_the_teardown_then_proceeds(tmp_path: Path) -> None:
    path = str(tmp_path / "node.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    threading.Timer(0.3, os.close, [fd]).start()
    t0 = time.monotonic()
    lock = NodeLock(path)
    assert lock.acquire(timeout=5) is True
    assert time.monotonic() - t0 >= 0.25
    lock.release()


def test_an_unusable_lock_file_means_acting_alone(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("")
    lock = NodeLock(str(tmp_path / "file" / "node.lock"))  # a file where the directory goes
    with caplog.at_level(logging.ERROR, "linkdns.nodelocal"):
        assert lock.acquire() is False
    assert "cannot open lock file" in caplog.text and "acting as the only instance" in caplog.text
    assert lock.last_out() is True
    with lock.networking():
        pass
