"""What the daemon's route handlers are given: its parts, not the Daemon (so no handler
module imports the server, and each can be read on its own)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass

from bgtransfer._engine._engine import Engine
from bgtransfer._engine._jobs import JobRunner
from bgtransfer._exceptions import DaemonStopped
from bgtransfer._store._base import Store

__all__ = ["STOPPED_MESSAGE", "Parts"]

STOPPED_MESSAGE = "the daemon was stopped"


@dataclass(frozen=True)
class Parts:
    home: str
    store: Store
    engine: Engine
    jobs: JobRunner
    stopping: asyncio.Event  # set once a stop begins: long polls and streams end
    event_queue: int  # live events a subscriber may lag behind before it is dropped

    async def wait_or_stop(self, work: Awaitable[object], timeout: float) -> None:
        """Await ``work`` for at most ``timeout`` s; a stop of the daemon ends every long poll
        at once with 503 ``daemon_stopped`` (so a stop does not wait for its waiters)."""
        job = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({job, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            job.cancel()
            stop.cancel()
        if self.stopping.is_set():
            raise DaemonStopped(STOPPED_MESSAGE)
        if job.done() and not job.cancelled():
            job.result()
