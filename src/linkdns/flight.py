"""Single-flight: identical work in flight runs once, and everyone who asked gets its result.

The cache (one exchange through the rest of the chain per missing key) and forward (one
upstream exchange per identical query) share it. The first caller leads: it runs the work and
lands the result; the others follow, each on a future of its own (so the leader creates none,
and a cancelled follower disturbs nobody)::

    waiters = flights.waiting.get(key)
    if waiters is not None:
        return await flights.follow(waiters)
    waiters = flights.lead(key)
    res = failed
    try:
        res = await work()
    finally:
        flights.land(key, waiters, res)

The miss paths read ``waiting`` and make the leader's list themselves (a call less per miss).
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Flights(Generic[K, V]):
    """The work in flight, by key: the followers' futures."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting: dict[K, list[asyncio.Future[V]]] = {}

    def __len__(self) -> int:
        return len(self.waiting)

    @staticmethod
    def follow(waiters: list[asyncio.Future[V]], loop: asyncio.AbstractEventLoop | None = None
               ) -> asyncio.Future[V]:
        """A future of the caller's own among ``waiters`` (``waiting[key]``, the work in flight
        for that key), resolved when the work lands."""
        fut: asyncio.Future[V] = (loop or asyncio.get_running_loop()).create_future()
        waiters.append(fut)
        return fut

    def lead(self, key: K) -> list[asyncio.Future[V]]:
        """The caller runs the work for ``key``; what it gets back goes to :meth:`land`."""
        waiters: list[asyncio.Future[V]] = []
        self.waiting[key] = waiters
        return waiters

    def land(self, key: K, waiters: list[asyncio.Future[V]], res: V) -> None:
        """The work for ``key`` is over: hand ``res`` to everyone who followed it."""
        waiting = self.waiting
        if waiting.get(key) is waiters:
            del waiting[key]
        for f in waiters:
            if not f.done():
                f.set_result(res)
