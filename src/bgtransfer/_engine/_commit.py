"""Group commit: task snapshots go to SQLite from one writer thread, many per transaction.

A FULL-synchronous commit costs a WAL fsync. Made on the event loop, one per checkpoint and
state change, it stalls every transfer and caps small files at a few hundred a second. The
writer thread takes whatever has queued up since its last commit and writes it in one
transaction, so sixteen tasks finishing together cost one fsync, and the loop goes on
reading sockets meanwhile.

Ordering is kept: jobs commit in submission order and their futures resolve in that order
on the loop. The engine fsyncs a partial file *before* it submits the snapshot that covers
it, so "data durable before the offset that names it" holds as before.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from bgtransfer._engine._files import fsync_dir
from bgtransfer._exceptions import StoreError
from bgtransfer._store._sqlite import SQLiteStore

__all__ = ["Committer"]

log = logging.getLogger("bgtransfer")

Job = Callable[[SQLiteStore], Any]
_Item = tuple[Job, "asyncio.Future[Any]", asyncio.AbstractEventLoop, str | None]


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class Committer:
    """The writer thread, with its own connection to the store (WAL: readers never wait)."""

    def __init__(self, path: str) -> None:
        # A long busy timeout: the loop's connection may hold the write lock for a while
        # (a batch insert of 100 000 tasks); waiting here blocks no transfer.
        self._store = SQLiteStore(path, busy_timeout=120.0)
        self._queue: list[_Item] = []
        self._cv = threading.Condition()
        self._closing = False
        self._last: asyncio.Future[Any] | None = None
        self._thread = threading.Thread(target=self._work, name="bgtransfer-commit", daemon=True)
        self._thread.start()

    def submit(self, job: Job, *, sync_dir: str | None = None) -> asyncio.Future[Any]:
        """Queue ``job(store)`` for the next transaction; the future holds its result.

        ``sync_dir``: a directory to fsync before the transaction (a file was just renamed
        into it); each directory is synced once per batch, however many files it got.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._cv:
            if self._closing:
                raise StoreError("the task store is closed")
            self._queue.append((job, fut, loop, sync_dir))
            self._cv.notify()
        self._last = fut
        return fut

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed (or has failed)."""
        last = self._last
        if last is not None and not last.done():
            await asyncio.wait([last])

    async def close(self) -> None:
        await self.flush()
        with self._cv:
            self._closing = True
            self._cv.notify()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._store.close()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            for (_, fut, loop, _), (ok, value) in zip(batch, self._run(batch), strict=True):
                try:
                    loop.call_soon_threadsafe(_settle, fut, ok, value)
                except RuntimeError:  # the loop is gone (interpreter exit)
                    return

    def _run(self, batch: list[_Item]) -> list[tuple[bool, Any]]:
        failed: dict[str, OSError] = {}
        for d in dict.fromkeys(item[3] for item in batch if item[3] is not None):
            try:
                fsync_dir(d)
            except OSError as exc:
                failed[d] = exc
        if failed:
            # Those tasks' renames may not survive a crash: do not record them as done.
            return [
                (False, StoreError(f"cannot fsync {d}: {failed[d]}"))
                if d in failed
                else self._one(job)
                for job, _, _, d in batch
            ]
        try:
            with self._store.transaction():
                return [(True, job(self._store)) for job, _, _, _ in batch]
        except Exception:  # noqa: BLE001 - any failure of the batch: retry each job alone
            # One job failed and took the batch with it: commit them one by one, so a bad
            # snapshot costs only its own task.
            return [self._one(job) for job, _, _, _ in batch]

    def _one(self, job: Job) -> tuple[bool, Any]:
        try:
            with self._store.transaction():
                return True, job(self._store)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting future, not lost
            log.error("task store commit failed: %r", exc)
            return False, exc
