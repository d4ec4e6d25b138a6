"""Group commit: task snapshots go to SQLite from one writer thread, many per transaction.

A FULL-synchronous commit costs a WAL fsync. Made on the event loop, one per checkpoint and
state change, it stalls every transfer and caps small files at a few hundred a second. The
writer thread takes whatever has queued up since its last commit and writes it in one
transaction: sixteen tasks finishing together cost one WAL fsync and one fsync per
directory, and the loop goes on reading sockets meanwhile. Two saves of one task that
meet in the queue become one UPDATE (their events and attempts are all kept).

Ordering: a save's files are fsynced, then its directories, then the transaction commits,
then its futures resolve on the loop in submission order. A checkpoint hands its partial
file's sync over (``sync_job``: fdatasync of a duplicate descriptor, then the partial's
record, then a new entry's directory), run here before the commit that names its offset:
"data durable before the offset that names it" holds while the loop goes on receiving,
which a checkpoint's fdatasync on the loop paused. A finished file is listed in
``sync_files`` and fsynced here too.

Fleet mode (a store with claims): every save of a task this engine holds by a claim
carries the claim's generation (``fences``), checked by the statement that writes it. A
refused save (LeaseLost: another worker took the task over) rolls back alone and fails its
futures; later saves of that task (``lost``) fail at once, without a trip to the store.

New tasks: ``insert(rows)`` (the daemon's submits) go through this thread too, so one writer
holds SQLite's lock instead of the loop and this thread taking turns, and submits that arrive
together, from one client or many, share one transaction and one WAL fsync. They are
committed first, in a transaction of their own, before the saves' files are fsynced: a
submit's answer never waits for the data fsyncs of finishing downloads. Each ``insert`` is
all or nothing on its own (a savepoint): a taken key or path fails that submit only.

Disk full: a save SQLite cannot commit for want of space (StoreFull) is not failed and not
dropped. It goes back to the front of the queue (merged with newer saves of its task) and
is tried again every RETRY_FULL seconds; its future resolves when it lands. ``on_full``
hears "full" (with the reason) and "commits land again" (None); the engine suspends its
tasks on the first and resumes them once commits land and the disk has room.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bgtransfer._engine._files import SyncJob, fsync_dir, fsync_file
from bgtransfer._exceptions import (
    DestinationError,
    LeaseLost,
    StoreError,
    StoreFull,
    TransferError,
)
from bgtransfer._protocol._machine import Snapshot
from bgtransfer._store._base import Attempt, Store, TaskRow
from bgtransfer._store._sqlite import EventRecord, SQLiteStore

__all__ = ["Committer", "Save"]

log = logging.getLogger("bgtransfer")

RETRY_FULL = 1.0  # seconds between tries while the store's disk is full


@dataclass(slots=True)
class Save:
    """One task's snapshot and what goes with it."""

    task_id: str
    snap: Snapshot | None  # None: only attempts (a request that starts moves no offset)
    wall: float
    event: EventRecord | None = None
    hook_state: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    sync_file: str | None = None  # a finished partial file to fsync first
    sync_dir: str | None = None  # a directory a file was just renamed into
    fence: int | None = None  # the claim's generation (fleet mode); else the committer's
    sync_job: SyncJob | None = None  # a checkpoint's sync of its partial, run first


@dataclass(slots=True)
class _Pending:
    """Saves of one task waiting for the writer, merged."""

    last: Save
    events: list[EventRecord] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    hook_state: str | None = None
    sync_files: list[str] = field(default_factory=list)
    sync_dirs: list[str] = field(default_factory=list)
    sync_jobs: list[SyncJob] = field(default_factory=list)
    fence: int | None = None
    # (future, index of its event in ``events`` or None, loop)
    waiters: list[tuple[asyncio.Future[Any], int | None, asyncio.AbstractEventLoop]] = field(
        default_factory=list
    )

    def add(self, save: Save, fut: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        if save.snap is not None or self.last.snap is None:
            self.last = save
        index = None
        if save.event is not None:
            index = len(self.events)
            self.events.append(save.event)
        self.attempts.extend(save.attempts)
        if save.hook_state is not None:
            self.hook_state = save.hook_state
        if save.sync_file is not None:
            self.sync_files.append(save.sync_file)
        if save.sync_dir is not None:
            self.sync_dirs.append(save.sync_dir)
        if save.sync_job is not None:
            self.sync_jobs.append(save.sync_job)
        if save.fence is not None:
            self.fence = save.fence
        self.waiters.append((fut, index, loop))

    def merge(self, newer: _Pending) -> None:
        """Append a newer pending of the same task (a save kept back by a full disk)."""
        base = len(self.events)
        if newer.last.snap is not None or self.last.snap is None:
            self.last = newer.last
        self.events.extend(newer.events)
        self.attempts.extend(newer.attempts)
        if newer.hook_state is not None:
            self.hook_state = newer.hook_state
        self.sync_files.extend(newer.sync_files)
        self.sync_dirs.extend(newer.sync_dirs)
        self.sync_jobs.extend(newer.sync_jobs)
        if newer.fence is not None:
            self.fence = newer.fence
        self.waiters.extend(
            (fut, None if i is None else base + i, loop) for fut, i, loop in newer.waiters
        )


@dataclass(slots=True)
class _Insert:
    """New tasks of one submit, inserted together or not at all."""

    rows: Sequence[TaskRow]
    fut: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class Committer:
    """The writer thread, with its own connection to the store (WAL: readers never wait).

    ``store``: the SQLite file's path, or a factory of the store's connection (PostgreSQL:
    a blocking driver is fine here, the loop never waits on it)."""

    def __init__(
        self,
        store: str | Callable[[], Store],
        on_full: Callable[[str | None], None] | None = None,
    ) -> None:
        if isinstance(store, str):
            # A long busy timeout: the loop's connection may hold the write lock for a
            # while (a batch insert of 100 000 tasks); waiting here blocks no transfer.
            self._store: Store = SQLiteStore(store, busy_timeout=120.0)
        else:
            self._store = store()
        # Fleet mode: task id -> generation of this worker's claim; and the tasks whose
        # claim was lost (their saves are refused here). Both written on the loop only.
        self.fences: dict[str, int] = {}
        self.lost: set[str] = set()
        self._queue: dict[str, _Pending] = {}
        self._inserts: list[_Insert] = []
        self._cv = threading.Condition()
        self._closing = False
        self._on_full = on_full  # called from the writer thread
        self._full = False
        self._last: asyncio.Future[Any] | None = None
        self._thread = threading.Thread(target=self._work, name="bgtransfer-commit", daemon=True)
        self._thread.start()

    def hold(self, task_id: str, token: int) -> None:
        """Fleet mode: the task's saves are fenced by the claim ``token`` from now on."""
        self.lost.discard(task_id)
        self.fences[task_id] = token

    def submit(self, save: Save) -> asyncio.Future[Any]:
        """Queue a save for the next transaction; the future gets its event's cursor."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if save.task_id in self.lost:
            if save.sync_job is not None:
                save.sync_job.discard()
            fut.set_exception(
                LeaseLost(f"the claim on task {save.task_id} was lost", task_id=save.task_id)
            )
            return fut
        if save.fence is None:
            save.fence = self.fences.get(save.task_id)
        with self._cv:
            if self._closing:
                if save.sync_job is not None:
                    save.sync_job.discard()
                raise StoreError("the task store is closed")
            pending = self._queue.get(save.task_id)
            if pending is None:
                pending = self._queue[save.task_id] = _Pending(last=save)
            pending.add(save, fut, loop)
            self._cv.notify()
        self._last = fut
        return fut

    def insert(self, rows: Sequence[TaskRow]) -> asyncio.Future[None]:
        """Queue new tasks for the next transaction; the future resolves once they are
        committed (or with the error that refused them: a key or path taken, a full disk)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._cv:
            if self._closing:
                raise StoreError("the task store is closed")
            self._inserts.append(_Insert(rows, fut, loop))
            self._cv.notify()
        return fut

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed (or has failed)."""
        last = self._last
        if last is not None and not last.done():
            await asyncio.wait([last])

    @property
    def full(self) -> bool:
        """Saves are kept back: none has landed since the disk was found full."""
        with self._cv:
            return self._full and bool(self._queue)

    def mark_full(self) -> None:
        """The loop's own connection found the disk full: report the next commit that
        lands as "space again"."""
        with self._cv:
            self._full = True

    async def close(self) -> None:
        # Closing first: saves a full disk keeps back are failed now, not waited for.
        with self._cv:
            self._closing = True
            self._cv.notify()
        await self.flush()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._store.close()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._inserts and not self._closing:
                    self._cv.wait()
                if not self._queue and not self._inserts:
                    return
                batch, self._queue = list(self._queue.values()), {}
            if not self._serve_inserts():
                return
            if not batch:
                continue
            results = self._run(batch)
            kept: list[_Pending] = []
            full: StoreFull | None = None
            for pending, result in zip(batch, results, strict=True):
                if isinstance(result, StoreFull) and not self._closing:
                    kept.append(pending)
                    full = result
                elif not self._resolve(pending, result):
                    return
            if full is not None:
                self._keep_back(kept, full)
            elif self._full:
                self._full = False
                log.warning("the task store can commit again")
                if self._on_full is not None:
                    self._on_full(None)

    def _serve_inserts(self) -> bool:
        """Commit the submits queued so far, each answered once stored; False: the loop is
        gone. Also called between the fsyncs of a batch of finished files, so a submit
        waits for one fsync at most, not for the whole batch (a plain loop of
        ``download()`` calls waits for each answer)."""
        with self._cv:
            inserts, self._inserts = self._inserts, []
        added = self._insert_all(inserts) if inserts else []
        for ins, err in zip(inserts, added, strict=True):
            try:
                ins.loop.call_soon_threadsafe(_settle, ins.fut, err is None, err)
            except RuntimeError:  # the loop is gone (interpreter exit)
                return False
        return True

    def _fsync_file(self, path: str) -> None:
        self._serve_inserts()  # no transaction is open here: see _serve_inserts
        fsync_file(path)

    def _resolve(self, pending: _Pending, result: list[int | None] | BaseException) -> bool:
        for fut, index, loop in pending.waiters:
            value: Any
            if isinstance(result, BaseException):
                ok, value = False, result
            else:  # each waiter gets the cursor of its own event
                ok, value = True, None if index is None else result[index]
            try:
                loop.call_soon_threadsafe(_settle, fut, ok, value)
            except RuntimeError:  # the loop is gone (interpreter exit)
                return False
        return True

    def _keep_back(self, kept: list[_Pending], full: StoreFull) -> None:
        """Put saves the full disk refused back in front of the queue; wait a while."""
        if not self._full:
            self._full = True
            log.error("%s", full.message)
            if self._on_full is not None:
                self._on_full(full.message)
        with self._cv:
            newer, self._queue = self._queue, {p.last.task_id: p for p in kept}
            for task_id, pending in newer.items():
                if task_id in self._queue:
                    self._queue[task_id].merge(pending)
                else:
                    self._queue[task_id] = pending
            deadline = time.monotonic() + RETRY_FULL
            while not self._closing and (left := deadline - time.monotonic()) > 0:
                self._cv.wait(left)

    def _run(self, batch: list[_Pending]) -> list[list[int | None] | BaseException]:
        failed: dict[int, BaseException] = {}
        for i, pending in enumerate(batch):
            # Run once: a save the full disk keeps back does not sync again.
            jobs, pending.sync_jobs = pending.sync_jobs, []
            for job in jobs:
                self._serve_inserts()  # a checkpoint's fdatasync may be long: see there
                try:
                    job.run()
                except DestinationError as exc:
                    failed[i] = exc
            for path in pending.sync_files:
                try:
                    self._fsync_file(path)
                except OSError as exc:
                    failed[i] = DestinationError(f"cannot fsync {path}: {exc}")
        dirs: dict[str, OSError | None] = {}
        for i, pending in enumerate(batch):
            for d in pending.sync_dirs:
                if d not in dirs:
                    try:
                        fsync_dir(d)
                        dirs[d] = None
                    except OSError as exc:
                        dirs[d] = exc
                err = dirs[d]
                if err is not None:
                    # The rename may not survive a crash: do not record the task as done.
                    failed[i] = DestinationError(f"cannot fsync directory {d}: {err}")
        ok = [i for i in range(len(batch)) if i not in failed]
        written: dict[int, list[int | None] | BaseException] = {}
        try:
            with self._store.transaction():
                for i in ok:
                    written[i] = self._write(batch[i])
        except Exception:  # noqa: BLE001 - one bad save must not sink the others: retry alone
            written = {i: self._one(batch[i]) for i in ok}
        return [failed[i] if i in failed else written[i] for i in range(len(batch))]

    def _insert_all(self, inserts: list[_Insert]) -> list[BaseException | None]:
        """Every queued submit in one transaction; if that fails as a whole (a full disk),
        each alone, so each hears its own answer."""
        try:
            with self._store.transaction():
                return [self._add(ins) for ins in inserts]
        except Exception:  # noqa: BLE001 - retried alone, each failure handed to its submit
            return [self._add_alone(ins) for ins in inserts]

    def _add(self, ins: _Insert) -> TransferError | None:
        """Insert one submit's rows in the open transaction; its own refusal (a key or a
        path taken) is its answer and leaves the others' writes standing."""
        try:
            self._store.insert_in_tx(ins.rows)
        except (DestinationError, StoreError) as exc:
            if isinstance(exc, StoreFull):
                raise
            return exc
        return None

    def _add_alone(self, ins: _Insert) -> BaseException | None:
        try:
            with self._store.transaction():
                return self._add(ins)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting submit, not lost
            return exc

    def _write(self, p: _Pending) -> list[int | None]:
        s = p.last
        return self._store.save_in_tx(
            s.task_id,
            s.snap,
            wall_time=s.wall,
            events=p.events,
            hook_state=p.hook_state,
            attempts=p.attempts,
            fence=p.fence,
        )

    def _one(self, p: _Pending) -> list[int | None] | BaseException:
        try:
            with self._store.transaction():
                return self._write(p)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting futures, not lost
            if isinstance(exc, LeaseLost):  # another worker's now: expected, not an error
                log.warning("task %s: %s", p.last.task_id, exc.message)
            elif not isinstance(exc, StoreFull):  # kept back and retried: logged once
                log.error("task store commit failed for %s: %r", p.last.task_id, exc)
            return exc
