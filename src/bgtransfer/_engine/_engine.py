"""The engine: runs every active task of one owner (a foreground session, or the daemon).

Each task's decisions come from its :class:`TransferMachine`; the engine only carries out the
actions it returns. Control calls (suspend, resume, cancel) go through the same machine, so
there is one place where state changes. This module holds the lifecycle, the control calls
and the checkpoints; the rest has a module each: admission (``_scheduler``), one-connection
downloads (``_download``), segments, uploads, placing a file (``_finalize``), the request
history (``_history``), stored state against the disk (``_recovery``), caps and cool-downs
(``_pacing``), a full disk (``_space``). Drivers see a :class:`Context`, not the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp

from bgtransfer._engine._commit import Committer, Save
from bgtransfer._engine._context import Context, Sleep
from bgtransfer._engine._download import Downloader
from bgtransfer._engine._events import Listeners
from bgtransfer._engine._finalize import finalize
from bgtransfer._engine._history import History
from bgtransfer._engine._limiter import Limiter
from bgtransfer._engine._live import Live, phase
from bgtransfer._engine._owner import OwnerLock, check_control, owner_alive
from bgtransfer._engine._pacing import READ_SIZE, Pacing
from bgtransfer._engine._ratelimit import Politeness, RateLimits
from bgtransfer._engine._recovery import BOOT_ID, reconcile
from bgtransfer._engine._scheduler import Scheduler
from bgtransfer._engine._segments import run_segmented
from bgtransfer._engine._sidecar_io import refuse_in_use
from bgtransfer._engine._space import DiskFull
from bgtransfer._engine._takeover import SETTLED, Claims, stop_lost
from bgtransfer._engine._upload import Uploader
from bgtransfer._exceptions import (
    DestinationError,
    InvalidTransition,
    LeaseLost,
    StoreFull,
    TaskNotFound,
    TransferError,
    TransferTimeout,
)
from bgtransfer._models import Event, Phase, TaskState
from bgtransfer._protocol import _machine as M
from bgtransfer._protocol._origin import origin_key
from bgtransfer._protocol._schedule import priority_rank
from bgtransfer._store._base import Store, TaskRow
from bgtransfer._store._codec import event_record
from bgtransfer._version import USER_AGENT

__all__ = ["READ_SIZE", "Engine"]  # READ_SIZE: the read size when nothing caps (_pacing)

log = logging.getLogger("bgtransfer")


class Engine:
    """``clock`` and ``sleep`` are injectable (backoffs and cool-downs wait on them)."""

    def __init__(
        self,
        store: Store,
        home: str,
        *,
        max_active: int = 16,
        max_per_host: int = 6,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        background: bool = False,
        on_finished: Callable[[TaskRow], None] | None = None,
        claims: Claims | None = None,
    ) -> None:
        self.store = store
        self.claims = claims  # fleet mode: tasks come from claims, commits are fenced
        self.background = background
        self.on_finished = on_finished
        self.home = home
        self.limiter = Limiter(max_active, max_per_host)
        self.rng = rng
        self.clock = clock
        self.owner = OwnerLock(home)
        self._live: dict[str, Live] = {}
        self._commit: Committer | None = None
        self._listeners = Listeners()
        self._changed = asyncio.Event()
        self._closed = False
        self.pacing = Pacing(store, background=background, clock=clock, sleep=sleep)
        self.rates: RateLimits = self.pacing.rates
        self.polite: Politeness = self.pacing.polite
        self.history = History(background=background)
        self._ctx = Context(
            clock=clock,
            sleep=sleep,
            execute=self._execute_sync,
            flush=self.flush,
            save_now=self._save_now,
            history=self.history,
            pacing=self.pacing,
            limiter=self.limiter,
        )
        self.refresh_hooks = self._ctx.refresh_hooks  # download(refresh=fn), by task id
        self._download = Downloader(self._ctx)
        self._uploads = Uploader(self._ctx)
        self.space = DiskFull(
            store.path,
            self._live,
            suspend=self._suspend_for_space,
            resume=self._resume_after_space,
            pump=self._pump,
            spawn=self._ctx.spawn,
        )
        self.scheduler = Scheduler(
            store,
            self.limiter,
            self._live,
            background=background,
            owner=self.owner.token,
            admit=self._admit,
            wake=self._pump,
        )

    def set_limit(self, origin: str | None, rate: int | None) -> None:
        """Change the global cap (``origin=None``) or one origin's; durable, effective now."""
        self.pacing.set_limit(origin, rate)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def on_full(reason: str | None) -> None:  # the writer thread
            if reason is not None:  # "commits land again" is noticed by the space watch
                with contextlib.suppress(RuntimeError):  # the loop is gone
                    loop.call_soon_threadsafe(self._on_store_full, reason)

        opener = self.claims.open_store if self.claims is not None else self.store.path
        self._commit = Committer(opener, on_full=on_full)
        self._ctx.committer = self.history.commit = self.space.committer = self._commit
        if self.background:  # the daemon's caps are set with `bgtransfer limit` and kept
            self.pacing.load_limits()
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, enable_cleanup_closed=True)
        self._ctx.session = aiohttp.ClientSession(
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
        self._closed = self.history.closed = self.space.closed = True
        self.scheduler.stop()
        for live in list(self._live.values()):
            if not live.machine.terminal:
                await self._stop(live)
                if self.background:
                    self._apply_now(live, M.Detached())
                else:
                    self._apply_now(live, M.Interrupted("interrupted: the session was closed"))
            if self.claims is None:  # a worker's rows are its claims' (released after)
                self.store.set_owner(live.row.id, None)
        self._live.clear()
        if self._commit is not None:
            await self._commit.close()
        if not self.background:
            self.store.interrupt_queued(self.owner.token, "interrupted: the session was closed")
        if self._ctx.session is not None:
            await self._ctx.session.close()
        self.owner.release()

    # -- public operations -----------------------------------------------------------------

    def submit(self, row: TaskRow) -> None:
        """Store a new task; it starts when the queue reaches it (see ``_scheduler``)."""
        self._submit([row], lambda: self.store.insert(row))

    def submit_many(self, rows: list[TaskRow]) -> None:
        """Store several new tasks in one transaction, then start what there is room for."""
        self._submit(rows, lambda: self.store.insert_many(rows))

    def _submit(self, rows: list[TaskRow], insert: Callable[[], None]) -> None:
        for row in rows:
            row.owner = self.owner.token
        self.space.check()
        refuse_in_use(self.store, rows)
        try:
            insert()
        except StoreFull as exc:
            self._on_store_full(exc.message)
            raise
        self._pump()

    @property
    def store_full(self) -> str | None:
        """Why nothing can be committed now (None: commits land)."""
        return self.space.reason

    def _on_store_full(self, reason: str) -> None:
        self.space.full(reason)
        self._changed.set()

    async def _suspend_for_space(self, live: Live) -> None:
        await self._stop(live)
        reason = self.store_full or "the home's disk is full"
        self._apply_now(live, M.Interrupted(f"suspended: {reason}"))

    def _resume_after_space(self, live: Live) -> None:
        reconcile(live, self._apply_now)
        self._execute_sync(live, live.machine.handle(M.ResumeRequested(), now=self.clock()))

    def _runner_cap(self) -> int:
        return self.scheduler.runner_cap()

    def _pump(self) -> None:
        """Start queued tasks while there is room (at the next turn, once: Scheduler.soon)."""
        self.scheduler.soon(self._pump_now)

    def _pump_now(self) -> None:
        if not self._closed and self.store_full is None:
            (self.scheduler.pump if self.claims is None else self.claims.feed)()

    def _admit(self, row: TaskRow) -> None:
        live = self._make_live(row)
        reconcile(live, self._apply_now)
        if live.machine.snap.phase is Phase.QUEUED:
            self._spawn(live)
        else:
            # Found finished by reconcile; held until that commit lands, so the next
            # pump does not pick it again from a store that still says queued.
            self._live[row.id] = live

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
            # Files reconciled, then interrupted ("resume() continues from byte N").
            reconcile(self._make_live(row), self._apply_now, owner_died=True)
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
            reconcile(live, self._apply_now)
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
        return self._listeners.subscribe(maxsize)

    def subscribed(self, q: asyncio.Queue[Event]) -> bool:
        return self._listeners.subscribed(q)

    def unsubscribe(self, q: asyncio.Queue[Event]) -> None:
        self._listeners.unsubscribe(q)

    # -- adoption and reconciliation -------------------------------------------------------

    def _make_live(self, row: TaskRow) -> Live:
        return Live.of(row, self.rng)

    def _adopt(self, task_id: str) -> Live:
        """The task to suspend, resume or cancel (refused while nothing can be committed:
        the caller would wait for a change that cannot land)."""
        self.space.check()
        live = self._live.get(task_id)
        if live is not None:
            return live
        row = self.store.get(task_id)
        if row is None:
            raise TaskNotFound(f"no task with id {task_id!r}", task_id=task_id)
        check_control(row, self.owner, background=self.background)
        live = self._make_live(row)
        if live.machine.terminal:
            # Finished: its machine refuses the control call. Not held as live, where no
            # runner would ever end it and wait() on it would hang.
            return live
        row.owner = self.owner.token
        self.store.set_owner(task_id, row.owner)
        self._live[task_id] = live
        return live

    # -- running ---------------------------------------------------------------------------

    def _spawn(self, live: Live) -> None:
        self._live[live.row.id] = live
        live.runner = asyncio.get_running_loop().create_task(
            self._run(live), name=f"bgtransfer-{live.row.id[:8]}"
        )

    async def _run(self, live: Live) -> None:
        m = live.machine
        host = live.origin = origin_key(m.spec.url)
        rank = priority_rank(m.spec.priority)
        try:
            upload = m.spec.kind == "upload"
            while phase(m) is Phase.QUEUED:
                await self.pacing.cool_down(live, self._apply_now)
                if phase(m) is not Phase.QUEUED:
                    break
                async with self.limiter.slot(host, rank) as slot:
                    live.slot = slot
                    await (self._uploads.run(live) if upload else self._attempt(live))
                live.slot = None
                if phase(m) is Phase.WAITING_RETRY:
                    await self._ctx.sleep(live.retry_delay)
                    self._execute_sync(live, m.handle(M.RetryDue(), now=self.clock()))
        except asyncio.CancelledError:
            raise
        except LeaseLost:
            self.lose(live.row.id)
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
            self.pacing.rates.forget(live.row.id)
            if phase(m) is not Phase.QUEUED and not self._closed:
                asyncio.get_running_loop().call_soon(self._pump)

    async def _attempt(self, live: Live) -> None:
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

    async def _execute(self, live: Live, queue: deque[M.Action]) -> None:
        m = live.machine
        while queue:
            action = queue.popleft()
            event: M.Event | None = None
            match action:
                case M.SendRequest():
                    event = await self._download.request(live, action)
                case M.WriteBody() if m.spec.segments > 1:
                    event = await run_segmented(self._ctx, self._download, live, action)
                case M.WriteBody():
                    event = await self._download.stream(live, action)
                case M.Finalize():
                    event = await finalize(self._ctx, live, action)
                case _:
                    self._execute_sync(live, [action])
            if event is not None:
                queue.extend(m.handle(event, now=self.clock()))
                if not isinstance(event, M.Response | M.DataWritten) and live.attempt is not None:
                    self.history.end(live)

    def _execute_sync(self, live: Live, actions: list[M.Action]) -> None:
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
                        self._uploads.terminate(live)
                    else:
                        live.part.remove()
                    if m.snap.phase is Phase.CANCELING:
                        self._execute_sync(live, m.handle(M.CancelCleaned(), now=self.clock()))
                case M.ScheduleRetry(delay=delay):
                    live.retry_delay = delay
                case M.TruncatePartial(size=size):
                    live.truncate(size)
                case M.Enqueue():
                    if live.runner is None or live.runner.done():
                        # Back to the store's queue; the pump starts it in its turn.
                        self._live.pop(live.row.id, None)
                        self._pump()
                case _:
                    raise InvalidTransition(f"{action!r} cannot run synchronously")

    def _apply_now(self, live: Live, event: M.Event) -> None:
        self._execute_sync(live, live.machine.handle(event, now=self.clock()))

    async def _control(self, live: Live, actions: list[M.Action]) -> None:
        for action in actions:
            if isinstance(action, M.StopTransfer):
                await self._stop(live)
            else:
                self._execute_sync(live, [action])
        self._changed.set()
        # The caller is told "done" only once the new state is durable.
        await self.flush()

    async def _stop(self, live: Live) -> None:
        runner = live.runner
        if runner is not None and not runner.done() and runner is not asyncio.current_task():
            runner.cancel()
            await asyncio.wait([runner])
        self._close_transfer(live)

    def _close_transfer(self, live: Live) -> None:
        if live.resp is not None:
            live.resp.close()
            live.resp = None
        live.part.close()
        self.history.end(live)

    def _save_now(self, live: Live) -> None:
        snap = live.machine.checkpoint(self.clock(), BOOT_ID)
        fence = None if self._commit is None else self._commit.fences.get(live.row.id)
        self.store.save(live.row.id, snap, wall_time=time.time(), fence=fence)

    def _persist(self, live: Live) -> None:
        """Checkpoint: the group commit syncs the partial (in its thread), then commits.

        What must follow the commit (events, hooks, forgetting a finished task) runs when it
        lands, in order, so nobody hears of a state the store could still lose.
        """
        m, row = live.machine, live.row
        job = live.part.sync_later(keep_cached=bool(m.spec.sha256 or m.spec.checksums))
        kind = "progress" if live.last_phase is m.snap.phase else "state"
        live.last_phase = m.snap.phase
        hook = "pending" if m.terminal and row.on_complete and row.hook_state is None else None
        if hook is not None:
            row.hook_state = hook
        attempts = self.history.for_snapshot(live)
        snap = m.checkpoint(self.clock(), BOOT_ID)
        wall = time.time()
        row.stamp(wall, finished=snap.phase is Phase.DONE)
        event = event_record(row.session, m.state.value, snap, wall) if kind == "state" else None
        sync_dir, live.dir_unsynced = live.dir_unsynced, None
        assert self._commit is not None
        fut = self._commit.submit(
            Save(row.id, snap, wall, event, hook, attempts, sync_dir=sync_dir, sync_job=job)
        )
        received, state = m.snap.offset, m.state
        fut.add_done_callback(lambda f: self._persisted(live, snap, kind, state, received, f))

    def _persisted(
        self,
        live: Live,
        snap: M.Snapshot,
        kind: str,
        state: TaskState,
        received: int,
        fut: asyncio.Future[Any],
    ) -> None:
        row = live.row
        if not fut.cancelled() and isinstance(fut.exception(), LeaseLost):
            self.lose(row.id)
            return
        if fut.cancelled() or fut.exception() is not None:
            # Logged by the committer; a later save of the task tries again. A finished task
            # has none, so waiters are released rather than left hanging.
            if snap.phase is Phase.DONE:
                live.finished.set()
            return
        cursor = fut.result()
        if snap.phase is Phase.DONE:
            live.finished.set()
            done = self.get(row.id)  # from memory: no store read on the loop
            if self._live.get(row.id) is live:
                del self._live[row.id]
            if not self.background:  # the daemon owns all background rows; nothing to clear
                with contextlib.suppress(Exception):
                    self.store.set_owner(row.id, None)
            if self.on_finished is not None:
                self.on_finished(done)
            self._pump()
        elif snap.phase is Phase.QUEUED and row.id not in self._live:
            self._pump()  # resumed: the store says queued only from now on
        if self.claims is not None and snap.phase in SETTLED:
            if snap.phase is Phase.SUSPENDED and self._live.get(row.id) is live:
                del self._live[row.id]  # a worker gives a suspended task back
            if row.id not in self._live:
                self.claims.settled(row.id, snap.phase.value)
        self._changed.set()
        if self._listeners:
            self._listeners.publish(live.event(snap, kind, state, received, cursor))

    def admit_claimed(self, row: TaskRow, token: int) -> None:
        """Fleet mode: run a claimed task, recovered as after a restart (resumed)."""
        assert self._commit is not None
        self._commit.hold(row.id, token)
        if row.snap.phase is Phase.CANCELING:  # a cancel its last worker did not finish
            live = self._live[row.id] = self._make_live(row)
            self._execute_sync(live, [M.RemovePartial()])
        else:
            self._admit(row)

    def lose(self, task_id: str) -> None:
        """Fleet mode: another worker holds the task now: stop it, touch nothing of it."""
        stop_lost(self._commit, self._live, task_id, self._close_transfer)
        if self.claims is not None:
            self.claims.lost(task_id)

    async def flush(self) -> None:
        """Wait until every snapshot persisted so far is committed."""
        if self._commit is not None:
            await self._commit.flush()
