"""One LISTEN connection per client, fanned out to every wait and stream of that client:
they sleep until a commit on any host concerns their session (a stream that reports
progress: also a checkpoint of one of its tasks), never polling the tables
(a long fallback re-read covers a listener that was lost and is being reopened)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from bgtransfer._exceptions import StoreUnavailable
from bgtransfer._store._pgcontrol import AsyncEventListener
from bgtransfer._store._pgschema import CONTROL_CHANNEL, EVENTS_CHANNEL, PROGRESS_CHANNEL

__all__ = ["FALLBACK", "Wakeups"]

log = logging.getLogger("bgtransfer.storeclient")

FALLBACK = 10.0  # seconds a waiter sleeps at most before it reads again anyway
LISTEN_SLICE = 30.0  # seconds per wait of the listener (it also notices a lost connection)
REOPEN_DELAY = 1.0  # seconds between attempts to reopen a lost listener


class Watch:
    """A waiter's flag: set when an event of its session (or a control request of one of
    its tasks) was committed since it was last cleared."""

    def __init__(self, session: str | None, task_id: str | None, *, progress: bool) -> None:
        self.session, self.task_id, self.progress = session, task_id, progress
        self.flag = asyncio.Event()

    def wanted(self, channel: str, payload: str) -> bool:
        if channel == CONTROL_CHANNEL:
            return self.task_id is not None and payload == self.task_id
        if channel == PROGRESS_CHANNEL and not self.progress:
            return False  # checkpoints wake only the streams that report progress
        return self.session is None or payload == self.session

    async def sleep(self, timeout: float) -> None:
        """Until the flag is set or ``timeout`` passed; the flag is then cleared."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flag.wait(), max(0.0, min(timeout, FALLBACK)))
        self.flag.clear()


class Wakeups:
    def __init__(self, url: str, *, connect_timeout: float) -> None:
        self._listener = AsyncEventListener(
            url,
            (EVENTS_CHANNEL, CONTROL_CHANNEL, PROGRESS_CHANNEL),
            connect_timeout=connect_timeout,
        )
        self._watches: set[Watch] = set()
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """LISTEN (once): a change committed after this returns wakes its watchers."""
        async with self._starting:  # two streams starting at once open one connection
            if self._task is None:
                await self._listener.open()
                self._task = asyncio.get_running_loop().create_task(
                    self._loop(), name="bgtransfer-store-listener"
                )

    @contextlib.contextmanager
    def watch(
        self, session: str | None, task_id: str | None = None, *, progress: bool = False
    ) -> Iterator[Watch]:
        """A flag to sleep on; taken before the state is read, so that nothing committed
        between the read and the sleep is missed. ``progress``: checkpoints of the
        session's tasks set it too."""
        w = Watch(session, task_id, progress=progress)
        self._watches.add(w)
        try:
            yield w
        finally:
            self._watches.discard(w)

    def _wake(self, notes: list[tuple[str, str]] | None) -> None:
        for w in self._watches:
            if notes is None or any(w.wanted(c, p) for c, p in notes):
                w.flag.set()

    async def _loop(self) -> None:
        while True:
            try:
                notes = await self._listener.wait(LISTEN_SLICE)
            except StoreUnavailable as exc:
                log.warning("fleet client: %s; listening again", exc.message)
                self._wake(None)  # they read again now, then every FALLBACK seconds
                await self._listener.close()
                await asyncio.sleep(REOPEN_DELAY)
                with contextlib.suppress(StoreUnavailable):
                    await self._listener.open()
                    self._wake(None)  # anything committed while nobody listened
                continue
            if notes:
                self._wake(notes)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._listener.close()
