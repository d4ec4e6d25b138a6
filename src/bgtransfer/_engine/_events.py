"""Live events for subscribers (the CLI's ``watch``, the daemon's event stream).

An event goes out only once the state it reports is committed, so nobody hears of a state
the store could still lose.
"""

from __future__ import annotations

import asyncio
import contextlib

from bgtransfer._models import Event

__all__ = ["Listeners"]


class Listeners:
    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[Event]] = []

    def __bool__(self) -> bool:
        return bool(self._queues)

    def subscribe(self, maxsize: int = 0) -> asyncio.Queue[Event]:
        """A queue of live events; with ``maxsize``, a subscriber that falls that far behind
        is dropped (see :meth:`subscribed`) instead of buffering without bound."""
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._queues.append(q)
        return q

    def subscribed(self, q: asyncio.Queue[Event]) -> bool:
        return q in self._queues

    def unsubscribe(self, q: asyncio.Queue[Event]) -> None:
        with contextlib.suppress(ValueError):
            self._queues.remove(q)

    def publish(self, ev: Event) -> None:
        for q in list(self._queues):
            try:
                q.put_nowait(ev)
            except asyncio.QueueFull:
                self._queues.remove(q)
