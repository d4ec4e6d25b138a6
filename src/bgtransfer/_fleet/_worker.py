"""A fleet worker: one engine whose tasks come from claims on a shared PostgreSQL queue.

Threads and connections (psycopg is blocking; the event loop never waits on the network):
- the loop runs the engine (transfers, files) and every decision below;
- the *lease thread* (one, so its connection is never shared) claims, renews, releases and
  heartbeats; the loop awaits it;
- the engine's *commit thread* writes snapshots, each fenced by its claim's generation;
- the *listener thread* waits for ``NOTIFY bgtransfer_queue`` and wakes the claim loop (and
  the pacing loop, ``_pace``, on a cool-down or a changed cap: they hold fleet-wide).

The claim loop claims only when told there is work (a notification, a task that settled
here) or on a slow sweep (leases that ran out, start times that came, nobody announces
those). A claimed task is recovered as after a daemon restart and resumed from its
committed offset; one taken over from a worker whose lease ran out first gets a partial
file of its own (``_engine._takeover``). Renewals run at a third of the lease; a worker that
cannot renew for two thirds of it stops every task itself (it may not be the owner any more),
and claims again once the store answers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from bgtransfer._daemon._hooks import run_hook
from bgtransfer._engine._engine import Engine
from bgtransfer._engine._takeover import drop_old, localize, take_over
from bgtransfer._exceptions import DestinationError, InvalidTransition, StoreError, TaskNotFound
from bgtransfer._fleet._jobs import JobFiring
from bgtransfer._fleet._pace import FleetPace
from bgtransfer._models import Phase
from bgtransfer._protocol._leases import LeaseBook
from bgtransfer._store._base import Store, TaskRow
from bgtransfer._store._pgschema import COOLDOWN_CHANNEL, LIMITS_CHANNEL, QUEUE_CHANNEL
from bgtransfer._store._postgres import CONTROL_CHANNEL, Claim, PostgresStore, QueueListener

__all__ = ["Worker"]

log = logging.getLogger("bgtransfer.fleet")

T = TypeVar("T")

STOPPED = "queued (its worker stopped)"
HOOK_TIMEOUT = float(os.environ.get("BGTRANSFER_HOOK_TIMEOUT", "60"))
# A task stopped because this worker could not write (disk full, quota, file size limit)
# goes back to the queue for any worker, not before this many seconds; this worker leaves
# it alone as long (the daemon's own disk-full wait, fleet-wide).
FULL_RETRY = float(os.environ.get("BGTRANSFER_FULL_RETRY", "30"))
FULL_MARKS = tuple(os.strerror(e) for e in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG))


def _reachable(row: TaskRow) -> str | None:
    """Why this worker cannot use the task's file or directory (None: it can)."""
    if row.spec.kind == "upload":
        path = row.path  # the source file
        if row.snap.phase is Phase.CANCELING or os.access(path, os.R_OK):
            return None  # (a cancel only asks its server to delete the upload)
        return f"cannot read {path} on this worker"
    directory = os.path.dirname(row.path)
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return f"the directory {directory} does not exist on this worker"
    except OSError as exc:
        return f"cannot reach the directory {directory} on this worker: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is not a directory on this worker"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"the directory {directory} is not writable on this worker"
    return None


class Worker:
    """``Worker(store_url, name, lease_s, max_active).run(stop)``: claim and run tasks
    until ``stop`` is set, then stop them at a checkpoint and give them back."""

    def __init__(
        self,
        store_url: str,
        name: str | None = None,
        *,
        lease_s: float = 30.0,
        max_active: int = 16,
        max_per_host: int = 6,
    ) -> None:
        if lease_s < 1.5:
            raise ValueError("the lease must be at least 1.5 seconds")
        self.url = store_url
        self.host = socket.gethostname()
        self.name = name or f"{self.host}-{os.getpid()}"
        self.max_active = max_active
        self.max_per_host = max_per_host
        self.book = LeaseBook(lease_s)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bgt-lease")
        self._wake = asyncio.Event()
        self._control_wake = asyncio.Event()
        self._pace_wake = asyncio.Event()
        self.pace: FleetPace | None = None
        self._stopping = False
        self._cut_off = False
        self._renewing: asyncio.Future[Any] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._hooks: set[asyncio.Task[Any]] = set()  # running completion hooks
        self._releases: list[tuple[str, int, str | None, bool]] = []
        self._releasing: asyncio.Task[None] | None = None
        self._db: PostgresStore | None = None
        self.engine: Engine | None = None

    # -- the engine's feeder (engine._takeover.Claims) ------------------------------------

    def open_store(self) -> Store:
        return PostgresStore(self.url)

    def feed(self) -> None:
        self._wake.set()

    def settled(self, task_id: str, phase_value: str) -> None:
        token = self.book.drop(task_id)
        if token is None:
            return
        self._give_back(task_id, token, None, done=phase_value == Phase.DONE.value)

    def lost(self, task_id: str) -> None:
        if self.book.drop(task_id) is not None:
            log.warning("task %s: another worker holds it now; stopped here", task_id)
        self._wake.set()

    # -- running ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self._db = await self._call(PostgresStore, self.url)
        home = tempfile.mkdtemp(prefix="bgtransfer-worker-")
        listener = threading.Thread(
            target=self._listen, args=(loop,), name="bgt-listen", daemon=True
        )
        try:
            store = await self._call(PostgresStore, self.url)
            self.engine = Engine(
                store,
                home,
                max_active=self.max_active,
                max_per_host=self.max_per_host,
                background=True,
                claims=self,
            )
            await self.engine.start()
            self.pace = FleetPace(
                self.name, self.engine, self._call, self._store, self.feed, self._pace_wake
            )
            await self.pace.refresh()  # the fleet's cool-downs, and shares of its caps
            await self._heartbeat()
            listener.start()
            log.info("worker %s on %s: claiming from the queue", self.name, self.host)
            self._wake.set()
            loops = [
                asyncio.create_task(self._claim_loop()),
                asyncio.create_task(self._renew_loop()),
                asyncio.create_task(self._control_loop()),
                asyncio.create_task(self.pace.run(self.book.renew_every, self._stopped)),
                asyncio.create_task(JobFiring(self.url).run()),  # scheduled jobs
            ]
            await stop.wait()
            log.info("worker %s: stopping", self.name)
            self._stopping = True
            self._wake.set()
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._shutdown()
        finally:
            self._stopping = True
            if self._releasing is not None:
                self._tasks.add(self._releasing)
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.engine is not None:
                await self.engine.close()  # idempotent
                with contextlib.suppress(StoreError):
                    self.engine.store.close()
            db, self._db = self._db, None
            if db is not None:
                with contextlib.suppress(StoreError):
                    await self._call(db.close)
            if self.pace is not None:
                self.pace.close()
            self._pool.shutdown(wait=False)
            shutil.rmtree(home, ignore_errors=True)

    async def _shutdown(self) -> None:
        """Stop every task at a checkpoint (committed under its claim), then give them
        back to the queue, and leave the list of workers."""
        assert self.engine is not None
        await self.engine.close()
        for hook in list(self._hooks):  # killed; recorded "pending" for another worker
            hook.cancel()
        await asyncio.gather(*list(self._hooks), return_exceptions=True)
        for task_id, token in list(self.book.held.items()):
            self.book.drop(task_id)
            self._give_back(task_id, token, STOPPED)
        await self._flush()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        with contextlib.suppress(StoreError):
            await self._call(self._store().forget_worker, self.name)
        log.info("worker %s: stopped; its tasks are back in the queue", self.name)

    def _spawn(self, coro: Any, *, hook: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        for tasks in (self._tasks, self._hooks) if hook else (self._tasks,):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kw))

    def _stopped(self) -> bool:
        return self._stopping

    def _idle(self) -> bool:
        """Not claiming: stopping, or cut off from the store (until a renewal lands)."""
        return self._stopping or self._cut_off

    def _store(self) -> PostgresStore:
        assert self._db is not None
        return self._db

    # -- claiming --------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while not self._stopping:
            swept = False
            try:
                await asyncio.wait_for(self._wake.wait(), self.book.sweep_every)
            except TimeoutError:
                swept = True
            self._wake.clear()
            if self._idle():
                continue
            if swept:
                await self._orphan_hooks()
            room = self.book.room(self.max_active)
            if room == 0:
                continue
            sent = time.time()
            try:
                claims = await self._call(
                    self._store().claim,
                    self.name,
                    self.book.lease_s,
                    limit=room,
                    now=sent,
                    exclude=self.book.staying_away(sent),
                    max_per_origin=self.max_per_host,
                )
            except StoreError as exc:
                log.warning("cannot claim tasks: %s", exc.message)
                continue
            for claim in claims:
                self.book.hold(claim.row.id, claim.token)
            if claims:
                self.book.renewed(sent, {}, set())
                if self.pace is not None and (self.pace.capped or self._pace_wake.is_set()):
                    await self.pace.refresh(claimed=True)  # its share, before they run
            for claim in claims:
                await self._admit(claim)
            if len(claims) == room:
                self._wake.set()  # there may be more: look again (the loop yields first)

    async def _admit(self, claim: Claim) -> None:
        """Run a claimed task here, or give it back with the reason."""
        assert self.engine is not None
        row, token = claim.row, claim.token
        try:
            why = await asyncio.to_thread(_reachable, row)
            if why is not None:
                raise DestinationError(why)
            row = await asyncio.to_thread(localize, row)  # begun on another host?
            if claim.takeover:
                await self._call(
                    self._store().close_open_attempts,
                    "interrupted: the worker running it lost its claim",
                    task_id=row.id,
                )
                moved, old = await asyncio.to_thread(take_over, row, token)
                await self._call(
                    self._store().move_partial,
                    row.id,
                    token,
                    moved.partial,
                    moved.snap,
                    wall_time=time.time(),
                )
                if old is not None:
                    await asyncio.to_thread(drop_old, row)
                row = moved
        except DestinationError as exc:
            log.warning("task %s: %s; left for another worker", row.id, exc.message)
            self.book.drop(row.id, token)
            self.book.set_away(row.id, time.time())
            self._give_back(row.id, token, f"queued: {exc.message}")
            return
        except StoreError as exc:  # LeaseLost included: not ours any more, or unreachable
            log.warning("task %s: not taken: %s", row.id, exc.message)
            self.book.drop(row.id, token)
            return
        if self.book.held.get(row.id) != token or self._stopping:
            return  # lost meanwhile
        log.info(
            "task %s: claimed (generation %d%s)",
            row.id,
            token,
            ", taken over" if claim.takeover else "",
        )
        self.engine.admit_claimed(row, token)

    # -- completion hooks ----------------------------------------------------------------------

    def _give_back(
        self, task_id: str, token: int, requeue: str | None, *, done: bool = False
    ) -> None:
        """Release a claim with the next batch (tasks settling together share one commit).
        A task completed here has its hook, if any, taken in the same statement (no other
        worker can run it meanwhile) and run here."""
        self._releases.append((task_id, token, requeue, done))
        if self._releasing is None or self._releasing.done():
            self._releasing = asyncio.get_running_loop().create_task(self._release_batches())

    async def _release_batches(self) -> None:
        while self._releases:
            batch, self._releases = self._releases, []
            try:
                full = await self._give_back_full(batch)
                batch = [item for item in batch if item[0] not in full]
                hooks = await self._call(self._store().release_many, batch, self.book.lease_s)
            except StoreError as exc:  # the leases run out instead; a sweep runs the hooks
                log.warning("cannot release %d task(s): %s", len(batch), exc.message)
                continue
            self._wake.set()
            tokens = {t: g for t, g, _, _ in batch}
            for task_id in hooks:
                self._spawn(self._hook_of(task_id, tokens[task_id]), hook=True)

    async def _give_back_full(self, batch: list[tuple[str, int, str | None, bool]]) -> set[str]:
        """Tasks this worker suspended for want of disk space go back to the queue with a
        start time: any worker may take them then (the daemon suspends them and resumes
        them once there is room; a fleet lets the next worker with room go on)."""
        stopped = [(t, g) for t, g, requeue, done in batch if requeue is None and not done]
        if not stopped:
            return set()
        now = time.time()
        until = now + FULL_RETRY
        at = time.strftime("%H:%M:%S", time.localtime(until))
        why = f"queued until {at} (a worker's disk was full): "
        full = await self._call(self._store().give_back_full, stopped, FULL_MARKS, until, why)
        for task_id in full:
            log.warning("task %s: this worker cannot write it; given back until %s", task_id, at)
            self.book.away[task_id] = until
        return full

    async def _flush(self) -> None:
        """Wait until every release asked for so far was tried."""
        while self._releasing is not None and not self._releasing.done():
            await asyncio.wait([self._releasing])

    async def _hook_of(self, task_id: str, token: int) -> None:
        row = await self._call(self._store().get, task_id)
        if row is not None:
            await self._run_hook(row, token)

    async def _orphan_hooks(self) -> None:
        """Hooks nobody runs (their worker stopped or died first): run them here."""
        try:
            ids = await self._call(self._store().orphan_hooks)
            for task_id in ids:
                got = await self._call(
                    self._store().claim_hook, task_id, self.name, self.book.lease_s
                )
                if got is not None:
                    self._spawn(self._run_hook(*got), hook=True)
        except StoreError as exc:
            log.warning("cannot look for completion hooks: %s", exc.message)

    async def _run_hook(self, row: TaskRow, token: int) -> None:
        """At least once: if this worker dies while it runs, its lease runs out and
        another worker runs it again (BGTRANSFER_TASK_ID is the idempotency key: a task
        completes once)."""
        self.book.hold(row.id, token)  # renewed with the tasks; counts as work here
        state = "pending"  # cancelled (the worker stops): for another worker to run
        try:
            state = await run_hook(row, HOOK_TIMEOUT)
        finally:
            self.book.drop(row.id, token)
            try:
                await asyncio.shield(
                    self._call(self._store().finish_hook, row.id, self.name, state)
                )
            except StoreError as exc:
                log.warning("task %s: cannot record its hook: %s", row.id, exc.message)

    # -- leases ----------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.book.renew_every)
            if self._renewing is None or self._renewing.done():
                self._renewing = asyncio.get_running_loop().create_task(self._renew())
                self._tasks.add(self._renewing)
                self._renewing.add_done_callback(self._tasks.discard)
            if self.book.must_give_up(time.time()):
                self._give_up()

    async def _renew(self) -> None:
        asked = dict(self.book.held)
        sent = time.time()
        try:
            kept = await self._call(self._store().renew, self.name, asked, self.book.lease_s)
            await self._heartbeat()
        except StoreError as exc:
            log.warning("cannot renew leases: %s", exc.message)
            return
        for task_id in self.book.renewed(sent, asked, kept):
            log.warning("task %s: its lease was taken over", task_id)
            self._lose(task_id)
        if self._cut_off:
            self._cut_off = False
            log.warning("worker %s: the task store answers again; claiming", self.name)
            self._wake.set()

    async def _heartbeat(self) -> None:
        await self._call(
            self._store().heartbeat, self.name, self.host, os.getpid(), lease_s=self.book.lease_s
        )

    def _give_up(self) -> None:
        """The store has not answered for two thirds of a lease: another worker may own
        these tasks soon. Stop them all now, touching nothing more."""
        held = list(self.book.held)
        log.error(
            "worker %s: no lease renewal for %.1f s; stopping its %d task(s)",
            self.name,
            self.book.give_up_after,
            len(held),
        )
        self._cut_off = True
        for task_id in held:
            self._lose(task_id)

    def _lose(self, task_id: str) -> None:
        assert self.engine is not None
        self.book.drop(task_id)
        self.engine.lose(task_id)

    # -- control requests of clients (suspend, cancel a task held here) --------------------

    async def _control_loop(self) -> None:
        """Apply what clients ask of the tasks this worker holds: a client on another host
        cannot stop this worker's transfer, so it records the request and notifies; the
        engine applies it (suspend: stop at a checkpoint; cancel: remove the partial file)
        through its own fenced commit, which clears the request. A sweep catches a
        notification missed while the listener reconnected."""
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._control_wake.wait(), 2 * self.book.sweep_every)
            self._control_wake.clear()
            if self._idle() or not self.book.held:
                continue
            try:
                asked = await self._call(self._store().controls_for, self.name)
            except StoreError as exc:
                log.warning("cannot read control requests: %s", exc.message)
                continue
            for task_id, action in asked:
                await self._apply_control(task_id, str(action))

    async def _apply_control(self, task_id: str, action: str) -> None:
        assert self.engine is not None
        token = self.book.held.get(task_id)
        if token is None:
            return
        try:
            if action == "cancel":
                await self.engine.cancel(task_id)
            else:
                await self.engine.suspend(task_id)
            log.info("task %s: %s, as a client asked", task_id, action)
        except (InvalidTransition, TaskNotFound, StoreError) as exc:
            # Finished (or refused) meanwhile: the request has nothing left to do.
            log.info("task %s: %s not applied: %s", task_id, action, exc)
            with contextlib.suppress(StoreError):
                await self._call(self._store().clear_control, task_id, token)

    # -- the queue listener ------------------------------------------------------------------

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """The listener thread: wake the claim loop on NOTIFY; reconnect when cut off."""
        listener: QueueListener | None = None
        delay = 0.5
        while not self._stopping:
            try:
                if listener is None:
                    listener = QueueListener(self.url)
                    delay = 0.5
                    self._notify(loop)  # anything announced while not listening
                    self._notify(loop, self._control_wake)
                    self._notify(loop, self._pace_wake)
                got = listener.wait(1.0)
                if COOLDOWN_CHANNEL in got or LIMITS_CHANNEL in got:  # before claims it affects
                    self._notify(loop, self._pace_wake)
                if QUEUE_CHANNEL in got:
                    self._notify(loop)
                if CONTROL_CHANNEL in got:
                    self._notify(loop, self._control_wake)
            except StoreError as exc:
                log.warning("queue listener: %s", exc.message)
                if listener is not None:
                    with contextlib.suppress(Exception):
                        listener.close()
                listener = None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.close()

    def _notify(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event | None = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone
            loop.call_soon_threadsafe((event or self._wake).set)
