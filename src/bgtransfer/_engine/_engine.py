"""The engine: runs every active task of one owner (a foreground session, later the daemon).

Each task's decisions come from its :class:`TransferMachine`; this module only carries out the
actions it returns: HTTP through aiohttp, bytes into the partial file, snapshots into the
store. Control calls (suspend, resume, cancel) go through the same machine, so there is one
place where state changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from multidict import CIMultiDict

from bgtransfer._engine._commit import Committer, Save
from bgtransfer._engine._files import PartialFile, PartialLost, file_mode, size_of
from bgtransfer._engine._http import connect_reason, lower_headers, why
from bgtransfer._engine._limiter import Limiter, Slot
from bgtransfer._engine._owner import OwnerLock, owner_alive
from bgtransfer._engine._pacing import Pacing
from bgtransfer._engine._ratelimit import Politeness, RateLimits
from bgtransfer._engine._rawbody import RawBody, take_over
from bgtransfer._engine._segments import reconcile_segments, run_segmented
from bgtransfer._engine._upload import UploadDriver
from bgtransfer._exceptions import (
    Cancelled,
    ConnectError,
    DestinationError,
    InvalidTransition,
    NetworkError,
    ReadError,
    StoreFull,
    TaskNotFound,
    TransferError,
    TransferTimeout,
)
from bgtransfer._models import Event, Phase, TaskState
from bgtransfer._protocol import _machine as M
from bgtransfer._protocol._origin import origin_key
from bgtransfer._protocol._schedule import priority_rank
from bgtransfer._protocol._upload import UploadMachine
from bgtransfer._store._base import Attempt, TaskRow
from bgtransfer._store._sqlite import SQLiteStore, event_record

__all__ = ["Engine"]

log = logging.getLogger("bgtransfer")

READ_SIZE = (
    1 << 20
)  # research/perf.md: 256 KiB-4 MiB reads run alike; smaller loses less on a crash
USER_AGENT = "bgtransfer/0.1"


@dataclass(eq=False)
class _Live:
    row: TaskRow
    machine: M.TransferMachine
    part: PartialFile
    runner: asyncio.Task[None] | None = None
    resp: aiohttp.ClientResponse | None = None
    retry_delay: float = 0.0
    slow: bool = False
    last_phase: Phase | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    attempt: Attempt | None = None  # the request in flight, for the history
    attempts_done: list[Attempt] = field(default_factory=list)  # for the next commit
    checksums: set[str] | None = None  # tus: algorithms the server offers (None: not asked)
    checksum_failures: int = 0
    slot: Slot | None = None  # the limiter slot the current attempt holds
    raw: RawBody | None = None  # the body being read straight off the socket
    dir_unsynced: str | None = None  # renamed into; fsynced by the next group commit
    origin: str = ""  # scheme://host:port of the task's URL (limits, cool-downs)
    response_spool: str | None = None  # uploads: the last answer's whole body, if kept


class Engine(UploadDriver, Pacing):
    def __init__(
        self,
        store: SQLiteStore,
        home: str,
        *,
        max_active: int = 16,
        max_per_host: int = 6,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        background: bool = False,
        on_finished: Callable[[TaskRow], None] | None = None,
    ) -> None:
        self.store = store
        self.background = background
        self.on_finished = on_finished
        self.home = home
        self.limiter = Limiter(max_active, max_per_host)
        self.rng = rng
        self.clock = clock
        self.owner = OwnerLock(home)
        self._live: dict[str, _Live] = {}
        self._http: aiohttp.ClientSession | None = None
        self._commit: Committer | None = None
        self._listeners: list[asyncio.Queue[Event]] = []
        self._changed = asyncio.Event()
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()
        # The home's disk is full (SQLite cannot commit): why, and the tasks suspended for it.
        self.store_full: str | None = None
        self._full_suspended: set[str] = set()
        self._space_watch: asyncio.Task[None] | None = None
        self.rates = RateLimits(clock)
        self.polite = Politeness(clock)
        self._wake: asyncio.TimerHandle | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def on_full(reason: str | None) -> None:  # the writer thread
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(self._store_state, reason)

        self._commit = Committer(self.store.path, on_full=on_full)
        if self.background:  # the daemon's caps are set with `bgtransfer limit` and kept
            self._load_limits()
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, enable_cleanup_closed=True)
        self._http = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            read_bufsize=READ_SIZE,
            headers={"User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def close(self) -> None:
        """Stop every task at a checkpoint.

        A foreground engine leaves its tasks SUSPENDED ("interrupted"), resumable by a later
        session; the daemon's engine leaves them RUNNING, to be picked up when it restarts.
        """
        if self._closed:
            return
        self._closed = True
        if self._wake is not None:
            self._wake.cancel()
        for live in list(self._live.values()):
            if not live.machine.terminal:
                await self._stop(live)
                if self.background:
                    live.machine.committed = live.machine.snap.offset
                    self._persist(live)
                else:
                    self._apply_now(live, M.Interrupted("interrupted: the session was closed"))
            self.store.set_owner(live.row.id, None)
        self._live.clear()
        if self._commit is not None:
            await self._commit.close()
        if not self.background:
            self.store.interrupt_queued(self.owner.token, "interrupted: the session was closed")
        if self._http is not None:
            await self._http.close()
        self.owner.release()

    # -- public operations -----------------------------------------------------------------

    def submit(self, row: TaskRow) -> None:
        """Store a new task; it starts when the queue reaches it.

        Queued work lives in the store, not in memory: only tasks that run (or wait to
        retry) have a coroutine, so a queue of 100 000 costs rows, not megabytes.
        """
        row.owner = self.owner.token
        self._check_room()
        try:
            self.store.insert(row)
        except StoreFull as exc:
            self._on_store_full(exc.message)
            raise
        self._pump()

    def submit_many(self, rows: list[TaskRow]) -> None:
        """Store several new tasks in one transaction, then start what there is room for."""
        for row in rows:
            row.owner = self.owner.token
        self._check_room()
        try:
            self.store.insert_many(rows)
        except StoreFull as exc:
            self._on_store_full(exc.message)
            raise
        self._pump()

    # -- the home's disk is full -----------------------------------------------------------

    def _check_room(self) -> None:
        if self.store_full is not None:
            raise StoreFull(self.store_full)

    def _store_state(self, reason: str | None) -> None:
        if reason is not None:
            self._on_store_full(reason)

    def _on_store_full(self, reason: str) -> None:
        """Nothing can be committed: stop every transfer at its bytes, keep every file.

        The tasks say SUSPENDED with the reason (in memory; the store learns it once it
        can commit again) and go on by themselves when there is space. A task that is
        placing its finished file just waits for its commit.
        """
        if self.store_full is not None or self._closed:
            return
        self.store_full = reason
        assert self._commit is not None
        self._commit.mark_full()
        log.error("suspending every transfer: %s", reason)
        active = (Phase.QUEUED, Phase.CONNECTING, Phase.TRANSFERRING, Phase.WAITING_RETRY)
        for live in list(self._live.values()):
            if live.machine.snap.phase in active:
                self._full_suspended.add(live.row.id)
                task = asyncio.get_running_loop().create_task(self._suspend_for_space(live))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        if self._space_watch is None:
            self._space_watch = asyncio.get_running_loop().create_task(self._watch_space())
        self._changed.set()

    async def _watch_space(self) -> None:
        """Resume once nothing waits to be committed and the disk has room: a commit that
        squeezes into the WAL's old pages is not yet space (resuming then would flap)."""
        try:
            while self.store_full is not None and not self._closed:
                await asyncio.sleep(FULL_POLL)
                assert self._commit is not None
                if not self._commit.full and _has_room(self.store.path):
                    self._on_store_back()
        finally:
            self._space_watch = None

    async def _suspend_for_space(self, live: _Live) -> None:
        await self._stop(live)
        reason = self.store_full or "the home's disk is full"
        self._apply_now(live, M.Interrupted(f"suspended: {reason}"))

    def _on_store_back(self) -> None:
        if self.store_full is None or self._closed:
            return
        log.warning("the task store commits again: resuming the suspended transfers")
        self.store_full = None
        ids, self._full_suspended = self._full_suspended, set()
        for task_id in ids:
            live = self._live.get(task_id)
            if live is None or live.machine.snap.phase is not Phase.SUSPENDED:
                continue
            self._reconcile(live)
            self._execute_sync(live, live.machine.handle(M.ResumeRequested(), now=self.clock()))
        self._pump()

    def _runner_cap(self) -> int:
        # Runners include tasks waiting for a per-host slot or backing off; allow some beyond
        # max_active so one busy host does not hold up the others queued behind it.
        return max(64, 4 * self.limiter.total)

    def _pump(self) -> None:
        """Start queued tasks from the store while there is room for runners."""
        if self._closed or self.store_full is not None:
            return
        # Finished tasks count until their completion commits (then they are forgotten and
        # the pump runs again), so memory stays bounded by the cap.
        running = sum(
            1
            for lv in self._live.values()
            if (lv.runner is not None and not lv.runner.done()) or lv.machine.terminal
        )
        free = self._runner_cap() - running
        if free <= 0:
            return
        owner = None if self.background else self.owner.token
        rows = self.store.next_queued(
            background=self.background, owner=owner, limit=free, exclude=self._live.keys()
        )
        for row in rows:
            live = self._make_live(row)
            self._reconcile(live)
            if live.machine.snap.phase is Phase.QUEUED:
                self._spawn(live)
            else:
                # Found finished by reconcile; held until that commit lands, so the next
                # pump does not pick it again from a store that still says queued.
                self._live[row.id] = live
        self._arm_wake()

    def recover(self, session: str) -> None:
        """Mark tasks whose owner process died as interrupted (SUSPENDED), fix their files."""
        for row in self.store.list(session):
            if row.snap.phase is Phase.DONE or row.background:
                continue
            if row.owner == self.owner.token or row.id in self._live:
                continue
            if row.owner is not None and owner_alive(self.home, row.owner):
                continue
            self.store.close_open_attempts(
                "interrupted: the process running it exited before this request ended",
                task_id=row.id,
            )
            live = self._make_live(row)
            self._reconcile(live)
            m = live.machine
            if not m.terminal:
                where = f"byte {m.snap.offset}" if m.snap.offset else "the start"
                ev = M.Interrupted(
                    "interrupted: the process running it exited; resume() continues from " + where
                )
                self._execute_sync(live, m.handle(ev, now=self.clock()))
            self.store.set_owner(row.id, None)

    def recover_background(self) -> None:
        """Daemon start: every unfinished background task goes back to the queue.

        One UPDATE requeues them all (a restart with 100 000 tasks must not cost 100 000
        commits); files are reconciled when each task is picked up. Suspended tasks stay
        suspended; cancellations interrupted by the crash are finished now.
        """
        self.store.close_open_attempts(
            "interrupted: the daemon stopped before this request ended", background=True
        )
        self.store.requeue_running(background=True)
        for row in self.store.in_phase(Phase.CANCELING, background=True):
            live = self._make_live(row)
            self._live[row.id] = live
            self._execute_sync(live, [M.RemovePartial()])
        self._pump()

    def get(self, task_id: str) -> TaskRow:
        live = self._live.get(task_id)
        if live is not None:
            row = replace(live.row)
            row.snap = replace(live.machine.snap)
            row.snap.active_seconds = live.machine.elapsed(self.clock())
            return row
        stored = self.store.get(task_id)
        if stored is None:
            raise TaskNotFound(f"no task with id {task_id!r}", task_id=task_id)
        return stored

    async def suspend(self, task_id: str) -> None:
        live = self._adopt(task_id)
        await self._control(live, live.machine.handle(M.SuspendRequested(), now=self.clock()))

    async def resume(self, task_id: str) -> None:
        live = self._adopt(task_id)
        if live.machine.snap.phase is Phase.SUSPENDED:
            self._reconcile(live)
            self.polite.exempt.add(task_id)  # a person's resume overrides a cool-down
        await self._control(live, live.machine.handle(M.ResumeRequested(), now=self.clock()))

    async def cancel(self, task_id: str) -> None:
        live = self._adopt(task_id)
        await self._control(live, live.machine.handle(M.CancelRequested(), now=self.clock()))

    async def wait(self, task_id: str) -> TaskRow:
        """The task once it has finished and its outcome is committed (a crash after this
        returns cannot take the completion back)."""
        while True:
            live = self._live.get(task_id)
            if live is not None and live.machine.terminal:
                await live.finished.wait()
            row = self.get(task_id)
            if row.snap.phase is Phase.DONE:
                return row
            self._changed.clear()
            # Tasks of other processes change only in the store, hence the bounded poll.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.25)

    def attempts(self, task_id: str) -> list[dict[str, Any]]:
        self.get(task_id)
        return [a.to_json() for a in self.store.attempts(task_id)]

    def subscribe(self, maxsize: int = 0) -> asyncio.Queue[Event]:
        """A queue of live events; with ``maxsize``, a subscriber that falls that far behind
        is dropped (see :meth:`subscribed`) instead of buffering without bound."""
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._listeners.append(q)
        return q

    def subscribed(self, q: asyncio.Queue[Event]) -> bool:
        return q in self._listeners

    def unsubscribe(self, q: asyncio.Queue[Event]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(q)

    # -- adoption and reconciliation -------------------------------------------------------

    def _make_live(self, row: TaskRow) -> _Live:
        cls = UploadMachine if row.spec.kind == "upload" else M.TransferMachine
        machine = cls.from_snapshot(row.spec, row.snap, rng=self.rng)
        live = _Live(row=row, machine=machine, part=PartialFile(row.partial, machine.snap))
        live.last_phase = row.snap.phase
        return live

    def _adopt(self, task_id: str) -> _Live:
        """The task to suspend, resume or cancel (refused while nothing can be committed:
        the caller would wait for a change that cannot land)."""
        self._check_room()
        live = self._live.get(task_id)
        if live is not None:
            return live
        row = self.store.get(task_id)
        if row is None:
            raise TaskNotFound(f"no task with id {task_id!r}", task_id=task_id)
        if row.background != self.background:
            raise InvalidTransition(
                f"task {task_id} belongs to a "
                + (
                    "background session; control it through the daemon"
                    if row.background
                    else "foreground session; control it from a foreground Session"
                ),
                task_id=task_id,
            )
        if (
            not self.background
            and row.owner not in (None, self.owner.token)
            and owner_alive(self.home, row.owner)
        ):
            raise InvalidTransition(
                f"task {task_id} is being run by another process ({row.owner.split('-')[0]})",
                task_id=task_id,
            )
        live = self._make_live(row)
        if live.machine.terminal:
            # Finished: its machine refuses the control call. Not held as live, where no
            # runner would ever end it and wait() on it would hang.
            return live
        row.owner = self.owner.token
        self.store.set_owner(task_id, row.owner)
        self._live[task_id] = live
        return live

    def _reconcile(self, live: _Live) -> None:
        """Bring the stored offset in line with the files on disk (after a crash)."""
        m, row = live.machine, live.row
        if m.terminal or m.spec.kind == "upload":
            return
        if m.snap.phase is Phase.CANCELING:
            return
        try:
            size = live.part.size()
        except DestinationError as exc:
            # The directory is not the task's any more: the next open fails the task.
            log.warning("task %s: %s", row.id, exc.message)
            return
        if m.snap.segments and reconcile_segments(m, size):
            log.warning("task %s: partial file does not fit its segments, restarting", row.id)
        if size is None:
            target_size = size_of(row.path)
            total = m.snap.total
            if (
                m.snap.offset > 0
                and total is not None
                and target_size == total
                and m.snap.offset >= total
            ):
                # Placed, but the COMPLETED commit was lost in the crash.
                m.snap.phase = Phase.DONE
                m.snap.detail = "completed"
                m.committed = m.snap.offset
                self._persist(live)
                return
            if m.snap.offset:
                log.warning("task %s: partial file missing, restarting from 0", row.id)
            m.snap.offset = m.committed = 0
            m.snap.total = m.snap.etag = m.snap.last_modified = None
        elif size < m.snap.offset:
            log.warning(
                "task %s: partial file has %d bytes, fewer than committed %d",
                row.id,
                size,
                m.snap.offset,
            )
            m.snap.offset = m.committed = size
        elif size > m.snap.offset and not m.snap.segments:  # a segmented file has holes
            if _tail_is_sound(m, size):
                # The process died, the machine did not: what it wrote after its last
                # checkpoint is in the page cache, whole, so resume after it.
                log.info(
                    "task %s: keeping %d bytes written after the last checkpoint",
                    row.id,
                    size - m.snap.offset,
                )
                m.snap.offset = m.committed = size
                return
            # Written in an earlier boot and maybe never synced: cut them off now, before a
            # checkpoint of this boot could vouch for them.
            try:
                live.part.open(m.snap.offset)
            except (DestinationError, OSError) as exc:
                log.warning("task %s: cannot trim the partial file: %s", row.id, exc)
            finally:
                live.part.close()

    # -- running ---------------------------------------------------------------------------

    def _spawn(self, live: _Live) -> None:
        self._live[live.row.id] = live
        live.runner = asyncio.get_running_loop().create_task(
            self._run(live), name=f"bgtransfer-{live.row.id[:8]}"
        )

    async def _run(self, live: _Live) -> None:
        m = live.machine
        host = live.origin = origin_key(m.spec.url)
        rank = priority_rank(m.spec.priority)
        try:
            upload = m.spec.kind == "upload"
            while _phase(m) is Phase.QUEUED:
                await self._cool_down(live)
                if _phase(m) is not Phase.QUEUED:
                    break
                async with self.limiter.slot(host, rank) as slot:
                    live.slot = slot
                    await (self._upload(live) if upload else self._attempt(live))
                live.slot = None
                if _phase(m) is Phase.WAITING_RETRY:
                    await asyncio.sleep(live.retry_delay)
                    self._execute_sync(live, m.handle(M.RetryDue(), now=self.clock()))
        except asyncio.CancelledError:
            raise
        except StoreFull as exc:
            # A commit the loop made itself found the disk full: keep every byte, wait.
            self._close_transfer(live)
            self._on_store_full(exc.message)
            self._apply_now(live, M.Interrupted(f"suspended: {exc.message}"))
        except DestinationError as exc:  # the directory went away under a checkpoint
            self._close_transfer(live)
            self._apply_now(live, M.Failed(DestinationError(exc.message, task_id=live.row.id)))
        except Exception as exc:
            log.exception("task %s: internal error", live.row.id)
            err = TransferError(f"internal error: {exc!r}", task_id=live.row.id)
            self._close_transfer(live)
            self._execute_sync(live, m.handle(M.Failed(err), now=self.clock()))
        finally:
            self._close_transfer(live)
            self.rates.forget(live.row.id)
            if _phase(m) is not Phase.QUEUED and not self._closed:
                asyncio.get_running_loop().call_soon(self._pump)

    async def _attempt(self, live: _Live) -> None:
        m = live.machine
        queue: deque[M.Action] = deque(m.handle(M.Start(), now=self.clock()))
        left = max(m.time_left(self.clock()), 0.0)
        deadline = asyncio.timeout(left)
        try:
            async with deadline:
                await self._execute(live, queue)
        except TimeoutError:
            if not deadline.expired():
                raise
            self._close_transfer(live)
            err = TransferTimeout(
                f"resource timeout of {m.spec.resource_timeout:g} s reached", task_id=live.row.id
            )
            await self._execute(live, deque(m.handle(M.TransportFailed(err), now=self.clock())))

    async def _execute(self, live: _Live, queue: deque[M.Action]) -> None:
        m = live.machine
        while queue:
            action = queue.popleft()
            event: M.Event | None = None
            match action:
                case M.SendRequest():
                    event = await self._request(live, action)
                case M.WriteBody() if m.spec.segments > 1:
                    event = await run_segmented(self, live, action)
                case M.WriteBody():
                    event = await self._stream(live, action)
                case M.Finalize():
                    event = await self._finalize(live, action)
                case _:
                    self._execute_sync(live, [action])
            if event is not None:
                queue.extend(m.handle(event, now=self.clock()))
                if not isinstance(event, M.Response | M.DataWritten) and live.attempt is not None:
                    self._end_attempt(live)

    def _execute_sync(self, live: _Live, actions: list[M.Action]) -> None:
        """Carry out the actions that need no awaiting."""
        m = live.machine
        for action in actions:
            match action:
                case M.Persist():
                    self._persist(live)
                case M.DiscardResponse() | M.StopTransfer():
                    self._close_transfer(live)
                case M.RemovePartial():
                    self._close_transfer(live)
                    if m.spec.kind == "upload":
                        self._terminate_upload(live)
                    else:
                        live.part.remove()
                    if m.snap.phase is Phase.CANCELING:
                        self._execute_sync(live, m.handle(M.CancelCleaned(), now=self.clock()))
                case M.ScheduleRetry(delay=delay):
                    live.retry_delay = delay
                case M.Enqueue():
                    if live.runner is None or live.runner.done():
                        # Back to the store's queue; the pump starts it in its turn.
                        self._live.pop(live.row.id, None)
                        self._pump()
                case _:
                    raise InvalidTransition(f"{action!r} cannot run synchronously")

    def _terminate_upload(self, live: _Live) -> None:
        """Tell a tus/IETF server that a cancelled upload can go (best effort, 5 s)."""
        url, http = live.machine.snap.upload_url, self._http
        if url is None or http is None or live.machine.snap.error is None:
            return
        if not isinstance(live.machine.snap.error, Cancelled):
            return
        headers = {"Tus-Resumable": "1.0.0"} if live.machine.spec.protocol == "tus" else {}

        async def delete() -> None:
            with contextlib.suppress(Exception):
                async with http.delete(
                    url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
                ):
                    pass

        task = asyncio.get_running_loop().create_task(delete())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _apply_now(self, live: _Live, event: M.Event) -> None:
        self._execute_sync(live, live.machine.handle(event, now=self.clock()))

    async def _control(self, live: _Live, actions: list[M.Action]) -> None:
        for action in actions:
            if isinstance(action, M.StopTransfer):
                await self._stop(live)
            else:
                self._execute_sync(live, [action])
        self._changed.set()
        # The caller is told "done" only once the new state is durable.
        await self.flush()

    async def _stop(self, live: _Live) -> None:
        runner = live.runner
        if runner is not None and not runner.done() and runner is not asyncio.current_task():
            runner.cancel()
            await asyncio.wait([runner])
        self._close_transfer(live)

    def _close_transfer(self, live: _Live) -> None:
        if live.resp is not None:
            live.resp.close()
            live.resp = None
        live.part.close()
        self._end_attempt(live)

    def _end_attempt(self, live: _Live) -> None:
        """Record the finished request: what it asked, what came back, what was decided."""
        attempt, live.attempt = live.attempt, None
        if attempt is None:
            return
        status = attempt.status
        detail = live.machine.snap.detail
        if status in (301, 302, 303, 307, 308) and not detail.startswith("failed"):
            outcome = "redirected"
        elif detail in ("connecting", "downloading", "verifying") or detail.startswith(
            ("downloading", "resuming")
        ):
            outcome = "body complete" if status and status < 300 else detail
        else:
            outcome = detail
        if self._closed:
            outcome = "interrupted: " + (
                "the daemon stopped" if self.background else "the session was closed"
            )
        attempt.ended_at = time.time()
        attempt.outcome = outcome
        # Written with the task's next snapshot, in the same transaction: every path that
        # ends an attempt persists soon after (retry, finish, suspend, fail).
        live.attempts_done.append(attempt)

    def open_attempt(self, live: _Live, url: str, range_start: int | None) -> Attempt:
        """A request that starts: on record (outcome "in progress") with the next commit,
        whatever becomes of the process; the row is updated when it ends."""
        attempt = Attempt(time.time(), url, range_start, key=os.urandom(8).hex())
        if self._commit is not None and not self._closed:
            # No await: the request is not held up for it (a crash in the next few
            # milliseconds may leave it unlisted); the writer merges it with the task's
            # other saves. Synced first like any commit of the task (segments still write),
            # so no commit ever lands while its file has unsynced bytes.
            live.part.sync()
            fut = self._commit.submit(
                Save(live.row.id, None, time.time(), attempts=[attempt.copy()])
            )
            fut.add_done_callback(_ignore)
        return attempt

    def _save_attempts(self, live: _Live) -> None:
        """Ended attempts that no snapshot is about to carry: on record by themselves."""
        attempts, live.attempts_done = live.attempts_done, []
        if attempts and self._commit is not None and not self._closed:
            fut = self._commit.submit(Save(live.row.id, None, time.time(), attempts=attempts))
            fut.add_done_callback(_ignore)

    def _persist(self, live: _Live) -> None:
        """Checkpoint: fsync the partial now, commit the snapshot in the next group commit.

        What must follow the commit (events, hooks, forgetting a finished task) runs when it
        lands, in order, so nobody hears of a state the store could still lose.
        """
        m, row = live.machine, live.row
        live.part.sync()
        now = self.clock()
        kind = "progress" if live.last_phase is m.snap.phase else "state"
        live.last_phase = m.snap.phase
        hook = "pending" if m.terminal and row.on_complete and row.hook_state is None else None
        if hook is not None:
            row.hook_state = hook
        attempts, live.attempts_done = live.attempts_done, []
        if live.attempt is not None:  # the request in flight, its bytes so far
            attempts.append(live.attempt.copy())
        snap = _stored(m, now)
        wall = time.time()
        event = event_record(row.session, m.state.value, snap, wall) if kind == "state" else None
        sync_dir, live.dir_unsynced = live.dir_unsynced, None
        assert self._commit is not None
        fut = self._commit.submit(
            Save(row.id, snap, wall, event, hook, attempts, sync_dir=sync_dir)
        )
        received, state = m.snap.offset, m.state
        fut.add_done_callback(lambda f: self._persisted(live, snap, kind, state, received, f))

    def _persisted(
        self,
        live: _Live,
        snap: M.Snapshot,
        kind: str,
        state: TaskState,
        received: int,
        fut: asyncio.Future[Any],
    ) -> None:
        row = live.row
        if fut.cancelled() or fut.exception() is not None:
            # Logged by the committer; a later save of the task tries again. A finished task
            # has none, so waiters are released rather than left hanging.
            if snap.phase is Phase.DONE:
                live.finished.set()
            return
        cursor = fut.result()
        if snap.phase is Phase.DONE:
            live.finished.set()
            if self._live.get(row.id) is live:
                del self._live[row.id]
            if not self.background:  # the daemon owns all background rows; nothing to clear
                with contextlib.suppress(Exception):
                    self.store.set_owner(row.id, None)
            if self.on_finished is not None:
                self.on_finished(self.get(row.id))
            self._pump()
        elif snap.phase is Phase.QUEUED and row.id not in self._live:
            self._pump()  # resumed: the store says queued only from now on
        self._changed.set()
        if self._listeners:
            ev = Event(
                task_id=row.id,
                session=row.session,
                kind=kind,
                state=state,
                detail=snap.detail,
                bytes_received=received,
                bytes_expected=snap.total,
                error=snap.error,
                cursor=cursor,
            )
            for q in list(self._listeners):
                try:
                    q.put_nowait(ev)
                except asyncio.QueueFull:
                    self._listeners.remove(q)

    async def flush(self) -> None:
        """Wait until every snapshot persisted so far is committed."""
        if self._commit is not None:
            await self._commit.flush()

    # -- I/O -------------------------------------------------------------------------------

    async def _request(self, live: _Live, action: M.SendRequest) -> M.Event:
        assert self._http is not None
        if live.resp is not None:
            live.resp.close()
            live.resp = None
        self._end_attempt(live)
        range_value = dict(action.headers).get("Range")
        live.attempt = self.open_attempt(
            live, action.url, int(range_value[6:].split("-")[0]) if range_value else None
        )
        rt = live.machine.spec.request_timeout
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=rt, sock_read=rt)
        try:
            resp = await self._http.get(
                action.url,
                headers=CIMultiDict(action.headers),
                allow_redirects=False,
                timeout=timeout,
            )
        except aiohttp.ClientConnectorError as exc:
            return M.TransportFailed(ConnectError(connect_reason(exc)))
        except TimeoutError:
            return M.TransportFailed(
                TransferTimeout(f"no response within {rt:g} s (request_timeout)")
            )
        except aiohttp.ClientResponseError as exc:
            # A response aiohttp cannot parse (huge or malformed headers): retrying cannot help.
            return M.Failed(TransferError(f"invalid HTTP response from server: {exc.message}"))
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientOSError,  # a reset before the response
        ) as exc:
            return M.TransportFailed(ReadError(f"connection lost before the response: {why(exc)}"))
        except aiohttp.ClientError as exc:
            return M.TransportFailed(NetworkError(f"request failed: {exc!r}"))
        live.resp = resp
        if live.attempt is not None:
            live.attempt.status = resp.status
        headers = lower_headers(resp)
        self._heard(action.url, resp.status, headers)
        return M.Response(resp.status, headers, wall_time=time.time(), reason=resp.reason)

    async def _stream(self, live: _Live, action: M.WriteBody) -> M.Event:
        m, part, resp = live.machine, live.part, live.resp
        assert resp is not None
        part.close()
        if action.truncate and size_of(part.path):
            # About to overwrite an earlier version's bytes (a restart): the new validator
            # goes on record first, or a crash could leave new bytes under the old one. A
            # direct commit, not an await: aiohttp drops a buffered body whose connection
            # closes while nobody reads it. Restarts are rare; the loop can afford it.
            self.store.save(live.row.id, _stored(m, self.clock()), wall_time=time.time())
        try:
            part.open(action.start)
        except PartialLost as exc:
            return M.RestartRequired(exc.message)
        except (DestinationError, OSError) as exc:
            msg = exc.message if isinstance(exc, DestinationError) else str(exc)
            return M.Failed(DestinationError(msg))
        watchdog = None
        if m.spec.low_speed_limit > 0:
            watchdog = asyncio.get_running_loop().create_task(self._watchdog(live))
        rt = m.spec.request_timeout

        def take(chunk: bytes | memoryview) -> None:
            part.write(chunk)
            if live.attempt is not None:
                live.attempt.bytes += len(chunk)
            # No await between write and handle: the offset always matches the file.
            actions = m.handle(M.DataWritten(len(chunk)), now=self.clock())
            if actions:
                self._execute_sync(live, actions)
                if m.terminal:  # max_bytes: the machine failed the task mid-body
                    raise _Halted

        raw = take_over(resp)
        try:
            if raw is None:
                async for chunk in resp.content.iter_chunked(self._read_size(live)):
                    take(chunk)
                    await self._throttle(live, len(chunk))
                resp.release()
            else:
                live.raw = raw
                await self._raw_stream(raw, take, rt, live)
                resp.close()  # the connection is ours now: never back to the pool
            live.resp = None
            return M.BodyEnded()
        except _Halted:
            assert m.snap.error is not None
            return M.Failed(m.snap.error)  # already applied: the machine ignores it
        except DestinationError as exc:
            # Disk full and the like: keep what is committed and wait for a person.
            return M.Interrupted(f"suspended: {exc.message}; resume() once it is fixed")
        except TimeoutError:
            return M.TransportFailed(TransferTimeout(f"no data for {rt:g} s (request_timeout)"))
        except (aiohttp.ClientError, ConnectionError, OSError) as exc:
            if live.slow:
                spec = m.spec
                return M.TransportFailed(
                    TransferTimeout(
                        f"slower than {spec.low_speed_limit} B/s for {spec.low_speed_time:g} s"
                    ),
                    slow=True,
                )
            return M.TransportFailed(
                ReadError(f"connection lost at byte {m.snap.offset} ({why(exc)})")
            )
        finally:
            if watchdog is not None:
                watchdog.cancel()
            live.slow = False
            if raw is not None:
                raw.close()
                live.raw = None
            if live.resp is not None:
                live.resp.close()
                live.resp = None

    async def _raw_stream(
        self,
        raw: RawBody,
        take: Callable[[bytes | memoryview], None],
        rt: float,
        live: _Live,
    ) -> None:
        if raw.buffered:
            take(raw.buffered)
            await self._throttle(live, len(raw.buffered))
            raw.buffered = b""
        loop = asyncio.get_running_loop()
        size = self._read_size(live)
        buf = memoryview(bytearray(size))
        left = raw.remaining
        while left > 0:
            async with asyncio.timeout(rt):
                n = await loop.sock_recv_into(raw.sock, buf[: min(size, left)])
            if n == 0:
                raise ConnectionError("body cut short")
            take(buf[:n])
            left -= n
            await self._throttle(live, n)

    async def _watchdog(self, live: _Live) -> None:
        """curl's --speed-limit/--speed-time: idle timeouts alone miss a trickling server."""
        m = live.machine
        limit, window = m.spec.low_speed_limit, m.spec.low_speed_time
        samples: deque[tuple[float, int]] = deque([(self.clock(), m.snap.offset)])
        while True:
            await asyncio.sleep(min(0.5, window / 4))
            now = self.clock()
            samples.append((now, m.snap.offset))
            while len(samples) > 2 and now - samples[1][0] >= window:
                samples.popleft()
            t0, b0 = samples[0]
            if now - t0 >= window and (m.snap.offset - b0) / (now - t0) < limit:
                live.slow = True
                if live.raw is not None:
                    live.raw.cut()
                if live.resp is not None:
                    live.resp.close()
                return

    async def _finalize(self, live: _Live, action: M.Finalize) -> M.Event:
        if live.slot is not None:
            # The network part is over: the next transfer may start while this one syncs and
            # commits (the limits are on connections, not on disk work).
            live.slot.release()
        # Not fsynced here: the group commit fsyncs it just before the offset that covers
        # it, so files finishing together share one trip to the writer thread.
        live.part.close(sync=False)
        m, row = live.machine, live.row
        check = functools.partial(
            live.part.seal,
            expected_length=action.expected_length,
            sha256=action.sha256,
            mode=file_mode(m.spec.umask),
        )
        try:
            if action.sha256 is not None:
                # Hashing the file read back from disk takes seconds for big files: not on
                # the loop.
                await asyncio.get_running_loop().run_in_executor(None, check)
            else:
                check()
        except TransferError as exc:
            return M.FinalizeFailed(exc)
        m.committed = m.snap.offset
        attempts, live.attempts_done = live.attempts_done, []
        snap = _stored(m, self.clock())
        assert self._commit is not None
        # The bytes and the full offset are durable before the target name appears, so a
        # crash between the two finds "placed, completion not recorded" (reconciled to
        # done), never a short file.
        try:
            await self._commit.submit(
                Save(row.id, snap, time.time(), attempts=attempts, sync_file=row.partial)
            )
        except DestinationError as exc:
            return M.FinalizeFailed(exc)
        # From here on no await: the name appears and the machine hears of it in one step,
        # so nobody sees the file while the task still says running.
        try:
            live.part.place(row.path, overwrite=row.overwrite)
        except TransferError as exc:
            return M.FinalizeFailed(exc)
        live.dir_unsynced = os.path.dirname(row.path)
        return M.Finalized()


FULL_POLL = 1.0  # seconds between looks at a full disk


def _has_room(path: str) -> bool:
    """Free space on the store's disk to go on with: 5% of it, 64 MiB at most."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return True  # cannot tell: the next commit will say
    return st.f_bavail * st.f_frsize >= min(64 << 20, st.f_blocks * st.f_frsize // 20)


def _ignore(fut: asyncio.Future[Any]) -> None:
    """Retrieve a future's outcome nobody waits for (the committer logged a failure)."""
    if not fut.cancelled():
        fut.exception()


class _Halted(Exception):
    """The machine ended the task while its body was being read."""


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


BOOT_ID = _boot_id()


def _stored(m: M.TransferMachine, now: float) -> M.Snapshot:
    """The snapshot to save, stamped with this boot: its bytes were written in this boot."""
    m.snap.boot_id = BOOT_ID
    return m.snapshot(now)


def _tail_is_sound(m: M.TransferMachine, size: int) -> bool:
    """May bytes of a one-stream download past the committed offset be kept? Only if the
    machine has not restarted since the checkpoint (unsynced bytes die with the page cache,
    not with the process) and the validator they were fetched under is on record (resume
    checks it with If-Range)."""
    snap = m.snap
    return (
        BOOT_ID is not None
        and snap.boot_id == BOOT_ID
        and (snap.etag is not None or snap.last_modified is not None)
        and snap.total is not None
        and size <= snap.total
    )


def _phase(m: M.TransferMachine) -> Phase:
    # A call, not an attribute read, so type checkers do not narrow across awaits.
    return m.snap.phase
