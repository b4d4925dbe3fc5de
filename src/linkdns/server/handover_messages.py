"""The hand-over's control connection (server/handover.py): who is at the other end
(``SO_PEERCRED``, same uid or refused) and its messages, one JSON object per
``SOCK_SEQPACKET`` packet with the file descriptors it carries (``SCM_RIGHTS``), read and
written on the event loop with a deadline."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

VERSION = 1
MAX_FDS = 200  # fds per packet (the kernel takes up to 253)
MAX_MSG = 65536
SEND_TIMEOUT = 5.0  # for a full socket buffer to drain


class HandoverError(Exception):
    """The hand-over was refused or broke off."""


# -- who ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


def check_peer(sock: socket.socket, uid: int | None = None) -> Peer:
    """The connected peer, if it runs as ``uid`` (default: our effective uid)."""
    p = peer_of(sock)
    want = os.geteuid() if uid is None else uid
    if p.uid != want:
        raise HandoverError(f"peer pid {p.pid} runs as uid {p.uid}, not {want}: refused")
    return p


# -- messages -------------------------------------------------------------------------------


async def _wait(sock: socket.socket, write: bool, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    fd = sock.fileno()
    (loop.add_writer if write else loop.add_reader)(fd, ready)
    try:
        await asyncio.wait_for(fut, timeout)
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def send(sock: socket.socket, msg: dict[str, Any], fds: list[int] | None = None,
               timeout: float = SEND_TIMEOUT) -> None:
    data = json.dumps(msg).encode()
    while True:
        try:
            socket.send_fds(sock, [data], fds or [])
            return
        except BlockingIOError:
            await _wait(sock, True, timeout)


async def recv(sock: socket.socket, timeout: float) -> tuple[dict[str, Any], list[int]]:
    """One message and the fds that came with it; HandoverError on EOF or garbage."""
    while True:
        try:
            data, fds, flags, _ = socket.recv_fds(sock, MAX_MSG, MAX_FDS)
            break
        except BlockingIOError:
            await _wait(sock, False, timeout)
    try:
        if not data:
            raise HandoverError("peer closed the connection")
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            raise HandoverError("message or file descriptors truncated")
        try:
            msg = json.loads(data)
        except ValueError:
            raise HandoverError("malformed message") from None
        if not isinstance(msg, dict) or msg.get("version") != VERSION:
            raise HandoverError(f"unknown message or protocol version: {data[:80]!r}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return msg, fds
