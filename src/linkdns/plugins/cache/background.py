"""The cache's background work: refreshes of entries (prefetch, serve_stale) and the stale
answer's verify exchange run as tasks of their own, tracked so that stopping the cache cancels
them (and the server's spawn, when there is one, sees them too)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from linkdns.request import Request

if TYPE_CHECKING:
    from linkdns.plugin import Env
    from linkdns.plugins.cache.store import Entry

log = logging.getLogger("linkdns.plugin.cache")


class Background:
    """The tasks of one cache: :meth:`refresh` an entry (one refresh per entry at a time),
    :meth:`spawn` any other work, :meth:`stop` them all."""

    __slots__ = ("env", "fetch", "tasks")

    def __init__(self, env: Env | None, fetch: Callable[[Request, bool], Awaitable[Any]]) -> None:
        self.env = env
        #: the cache's exchange through the rest of the chain (``refresh`` True: a refresh)
        self.fetch = fetch
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        if self.env is not None:
            t = self.env.spawn(coro)
        else:
            t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    def refresh(self, e: Entry, req: Request) -> bool:
        """Refresh ``e`` for ``req`` in the background; False when a refresh of it runs."""
        if e.refreshing:
            return False
        e.refreshing = True
        self.spawn(self._refresh_run(e, req))
        return True

    async def _refresh_run(self, e: Entry, req: Request) -> None:
        try:
            await self.fetch(req, True)
        except Exception:
            log.exception("cache refresh of %s %s failed", req.name, req.type_name)
        finally:
            e.refreshing = False

    async def stop(self) -> None:
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def detached(req: Request) -> Request:
    """A request for a background exchange: same query, same client, fresh meta."""
    return Request(req.q, req.peer, req.proto, req.server, req.zone)
