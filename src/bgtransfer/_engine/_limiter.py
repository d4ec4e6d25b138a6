"""Slots for active transfers: a global limit and a per-origin limit, granted by priority
(0 high, 1 normal, 2 low), FIFO within one priority.

Keys are origins (``scheme://host:port``, :func:`origin_key`): two ports of one host are two
servers, and so are http and https. The per-origin limit counts connections: a task holds
one slot, and a segmented download takes one more per extra connection
(:meth:`Limiter.try_extra`), never ahead of a task that waits for that origin.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bgtransfer._protocol._origin import origin_key

__all__ = ["Limiter", "Slot", "origin_key"]


class Limiter:
    def __init__(self, total: int, per_host: int) -> None:
        self.total = total
        self.per_host = per_host
        self._active = 0
        self._hosts: dict[str, int] = {}
        self._waiters: deque[tuple[str, asyncio.Future[None]]] = deque()
        self._rank: dict[asyncio.Future[None], int] = {}

    def _can(self, host: str) -> bool:
        return self._active < self.total and self._hosts.get(host, 0) < self.per_host

    def _take(self, host: str) -> None:
        self._active += 1
        self._hosts[host] = self._hosts.get(host, 0) + 1

    def _release(self, host: str, *, task: bool = True) -> None:
        if task:
            self._active -= 1
        left = self._hosts[host] - 1
        if left:
            self._hosts[host] = left
        else:
            del self._hosts[host]
        self._dispatch()

    def _dispatch(self) -> None:
        # FIFO, but a waiter blocked only by its own host's limit does not block other hosts.
        for item in list(self._waiters):
            if self._active >= self.total:
                break
            host, fut = item
            if fut.done():
                self._waiters.remove(item)
                self._rank.pop(fut, None)
            elif self._can(host):
                self._waiters.remove(item)
                self._rank.pop(fut, None)
                self._take(host)
                fut.set_result(None)

    def try_extra(self, host: str) -> Slot | None:
        """One more connection for a task that already holds a slot of ``host``, if the
        origin has room and no task is waiting for it (queued tasks come first)."""
        if self._hosts.get(host, 0) >= self.per_host:
            return None
        if any(h == host and not fut.done() for h, fut in self._waiters):
            return None
        self._hosts[host] = self._hosts.get(host, 0) + 1
        return Slot(self, host, task=False)

    @asynccontextmanager
    async def slot(self, host: str, priority: int = 1) -> AsyncIterator[Slot]:
        if self._can(host) and not self._waiters:
            self._take(host)
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            item = (host, fut)
            # A high-priority task goes ahead of every waiter of lower priority.
            at = next(
                (i for i, (_, f) in enumerate(self._waiters) if self._rank.get(f, 1) > priority),
                len(self._waiters),
            )
            self._waiters.insert(at, item)
            self._rank[fut] = priority
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release(host)
                elif item in self._waiters:
                    self._waiters.remove(item)
                self._rank.pop(fut, None)
                raise
        held = Slot(self, host)
        try:
            yield held
        finally:
            held.release()


class Slot:
    """A granted slot; :meth:`release` gives it back early (once the network part is done)."""

    __slots__ = ("_host", "_limiter", "_task")

    def __init__(self, limiter: Limiter, host: str, *, task: bool = True) -> None:
        self._limiter: Limiter | None = limiter
        self._host = host
        self._task = task

    def release(self) -> None:
        if self._limiter is not None:
            limiter, self._limiter = self._limiter, None
            limiter._release(self._host, task=self._task)
