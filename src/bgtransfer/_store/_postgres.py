"""PostgreSQL store (fleet mode): the same tables and the same SQL as SQLite's, on psycopg 3,
plus claims: workers on many hosts share one queue.

A worker claims runnable tasks with ``FOR UPDATE SKIP LOCKED`` (two workers never wait for
each other, nor take the same task), holds each by a lease it renews, and commits under the
claim's generation (a fencing token): once the lease ran out and another worker claimed the
task, the old holder's commits are refused (:class:`LeaseLost`), whatever it still believes.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg
import psycopg.errors

from bgtransfer._exceptions import LeaseLost, StoreError, StoreFull, StoreUnavailable
from bgtransfer._models import Phase
from bgtransfer._protocol._task import Snapshot
from bgtransfer._store._base import TaskRow
from bgtransfer._store._codec import COLUMNS, SNAPSHOT_SET, snapshot_values
from bgtransfer._store._pgcontrol import ControlMixin
from bgtransfer._store._pgfleet import FleetMixin, WorkerRow
from bgtransfer._store._pgschema import (
    CONTROL_CHANNEL,
    COOLDOWN_CHANNEL,
    EVENTS_CHANNEL,
    LIMITS_CHANNEL,
    MIGRATIONS,
    QUEUE_CHANNEL,
    SCHEMA_VERSION,
)
from bgtransfer._store._sql import SQLStore

__all__ = [
    "CONTROL_CHANNEL",
    "SCHEMA_VERSION",
    "Claim",
    "EventListener",
    "PostgresStore",
    "QueueListener",
    "WorkerRow",
]

# pg_advisory_xact_lock key: workers that start together migrate one after the other.
_MIGRATION_LOCK = 0x6267_7472_6E73  # "bgtrns"

# Claimable besides due queued tasks: those a worker was running when its lease ran out.
_TAKEOVER = tuple(p.value for p in Phase if p not in (Phase.QUEUED, Phase.SUSPENDED, Phase.DONE))

# The two halves of a claim (parameters: now, the phases, limit / now, limit).
CLAIM_EXPIRED = (
    "SELECT id FROM tasks WHERE lease_owner IS NOT NULL AND phase != 'done' "
    "AND lease_expires < ? AND background=1 "
    f"AND phase IN ('queued', {', '.join('?' * len(_TAKEOVER))}) "
    "ORDER BY priority, created_at, id LIMIT ? FOR UPDATE SKIP LOCKED"
)
CLAIM_QUEUED = (
    "SELECT id FROM tasks WHERE phase='queued' AND background=1 "
    "AND (not_before IS NULL OR not_before <= ?) AND lease_owner IS NULL "
    "ORDER BY priority, created_at, id LIMIT ? FOR UPDATE SKIP LOCKED"
)
# A taken-over task that was running goes back to queued, as a daemon restart requeues its
# own (recovery then resumes it from its committed offset); a cancel is finished as is.
_RUNNING = ("connecting", "transferring", "waiting_retry", "verifying")


def _requeue(*also: str) -> str:
    """SET clauses: a running task goes back to queued, its detail (the ``?``) says why;
    ``also``: other phases whose detail is set too."""
    running = ", ".join(f"'{p}'" for p in _RUNNING)
    told = ", ".join(f"'{p}'" for p in (*_RUNNING, *also))
    return (
        f"phase=CASE WHEN phase IN ({running}) THEN 'queued' ELSE phase END, "
        f"detail=CASE WHEN phase IN ({told}) THEN ? ELSE detail END"
    )


_REQUEUE = _requeue()
_TAKE = "lease_owner=?, lease_expires=?, generation=generation+1"
TAKEN_OVER = "queued (taken over: its worker's lease ran out)"
# Live leases per origin (the fleet-wide per-origin limit), from a partial index.
_LIVE = (
    "SELECT origin, COUNT(*) FROM tasks WHERE lease_owner IS NOT NULL AND phase != 'done' "
    "AND lease_expires >= ? AND origin IS NOT NULL GROUP BY origin"
)
_CLAIM_LOCK = 0x6267_7472_636C  # "bgtrcl": claims with per-origin limits take turns


@dataclass(frozen=True, slots=True)
class Claim:
    row: TaskRow
    token: int  # the generation: pass it as ``fence`` to every commit of the task
    # Taken from a holder whose lease ran out (it may still run: resume into a new file).
    takeover: bool = False


class _Conn:
    """psycopg with the ``?`` placeholders the shared SQL is written with, its failures as
    StoreError, and a new connection when the last one was lost (server restart, network
    cut, connection killed): the call that finds it lost fails, the next one reconnects."""

    def __init__(self, url: str, connect_timeout: float) -> None:
        self.url, self.timeout = url, max(1, int(connect_timeout))
        self.closed = False
        self.in_tx = 0  # transactions open (psycopg nests them as savepoints)
        self.con = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=self.timeout)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to the task store: {_safe(exc)}") from exc

    def live(self) -> psycopg.Connection[Any]:
        if self.closed:
            raise StoreError("the task store is closed")
        if self.con.closed or self.con.broken:
            # Only between transactions: a transaction cut off is failed by its caller.
            self.con = self._connect()
        return self.con

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        con = self.con if self.in_tx else self.live()
        try:
            # The shared SQL has no literal "?" or "%".
            return con.execute(sql.replace("?", "%s"), parameters)
        except psycopg.OperationalError as exc:
            raise _store_error(exc) from exc

    def close(self) -> None:
        self.closed = True
        self.con.close()


class PostgresStore(FleetMixin, SQLStore, ControlMixin):
    _db: _Conn
    _integrity_error: ClassVar[type[Exception]] = psycopg.errors.UniqueViolation
    _no_limit = None
    _fencing = True

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self._url = url
        self._db = _Conn(url, connect_timeout)
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    @property
    def path(self) -> str:
        return self._url

    def close(self) -> None:
        self._db.close()

    def transaction(self) -> AbstractContextManager[None]:
        return self._tx()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        con = self._db.live() if not self._db.in_tx else self._db.con
        self._db.in_tx += 1
        try:
            with con.transaction():
                yield
        except psycopg.OperationalError as exc:  # the COMMIT, or a statement of the body
            raise _store_error(exc) from exc
        finally:
            self._db.in_tx -= 1

    def _version(self) -> int:
        # The catalog read as a table (a fresh snapshot), not through to_regclass: that one
        # may answer from this connection's cache of a lookup made before the lock.
        found = self._db.execute(
            "SELECT 1 FROM pg_tables WHERE schemaname=current_schema() "
            "AND tablename='bgtransfer_schema'"
        ).fetchone()
        if found is None:
            return 0
        row = self._db.execute("SELECT version FROM bgtransfer_schema").fetchone()
        return 0 if row is None else int(row[0])

    def _migrate(self) -> None:
        if self._version() == SCHEMA_VERSION:
            return
        with self._tx():
            self._db.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            version = self._version()  # again, under the lock: another worker may have done it
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"the task store has schema version {version}, newer than this "
                    f"bgtransfer understands ({SCHEMA_VERSION}); upgrade bgtransfer"
                )
            if version == 0:
                self._db.execute("CREATE TABLE bgtransfer_schema (version INTEGER NOT NULL)")
                self._db.execute("INSERT INTO bgtransfer_schema VALUES (0)")
            for step in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[step]:
                    self._db.execute(stmt)
            self._db.execute("UPDATE bgtransfer_schema SET version=?", (SCHEMA_VERSION,))

    # -- fleet mode: claims, leases, fencing -------------------------------------------------

    def claim(
        self,
        worker: str,
        lease_s: float,
        *,
        limit: int = 1,
        now: float | None = None,
        exclude: Collection[str] = (),
        max_per_origin: int | None = None,
    ) -> builtins.list[Claim]:
        """Take up to ``limit`` runnable background tasks for ``worker`` until ``now +
        lease_s``: due queued tasks, and tasks whose holder's lease ran out. Each claim
        raises the task's generation, which fences off any earlier holder. A taken-over
        task that was running is queued again (``Claim.takeover``). ``exclude``: ids this
        worker will not take now (a directory it cannot reach). ``max_per_origin``: no
        origin gets more live leases than this, counted over every worker (claims then
        take turns, so two workers cannot both take the last place of an origin).

        A task a worker runs always holds its lease (released when it stops running), so
        an unleased task that is not queued belongs to nobody's queue and is not taken."""
        now = time.time() if now is None else now
        skip, skipped = "", builtins.list[Any](exclude)
        if skipped:
            skip = f"AND id NOT IN ({', '.join('?' * len(skipped))}) "
        tokens: dict[str, int] = {}
        taken: set[str] = set()
        with self._tx():
            live: dict[str, int] | None = None
            if max_per_origin is not None:
                self._db.execute("SELECT pg_advisory_xact_lock(?)", (_CLAIM_LOCK,))
                live = {str(o): int(n) for o, n in self._db.execute(_LIVE, (now,)).fetchall()}
                full = [o for o, n in live.items() if n >= max_per_origin]
                if full:
                    skip += f"AND (origin IS NULL OR origin NOT IN ({', '.join('?' * len(full))})) "
                    skipped += full
            # Two walks of an index each, never a scan of the queue: first the tasks whose
            # holder's lease ran out (begun work: resume it), then the queue's head.
            # No claim of an origin cooling down (a 429/503 with Retry-After heard by any
            # worker): nobody asks it again before then.
            skip += "AND (origin IS NULL OR origin NOT IN (SELECT origin FROM cooldowns "
            skip += "WHERE until > ?)) "
            skipped.append(now)
            for takeover, select, args in (
                (True, CLAIM_EXPIRED, (now, *_TAKEOVER)),
                (False, CLAIM_QUEUED, (now,)),
            ):
                room = limit - len(tokens)
                if room <= 0:
                    break
                select = select.replace("ORDER BY", skip + "ORDER BY")
                if live is None or max_per_origin is None:
                    ids, ids_args = select, [*args, *skipped, room]
                else:
                    chosen = self._within_limits(select, [*args, *skipped], room, live,
                                                 max_per_origin)  # fmt: skip
                    if not chosen:
                        continue
                    ids, ids_args = ", ".join("?" * len(chosen)), chosen
                sets, set_args = _TAKE, [worker, now + lease_s]
                if takeover:
                    sets, set_args = f"{_TAKE}, {_REQUEUE}", [*set_args, TAKEN_OVER]
                cur = self._db.execute(
                    f"UPDATE tasks SET {sets} WHERE id IN ({ids}) RETURNING id, generation",
                    [*set_args, *ids_args],
                )
                got = {str(i): int(g) for i, g in cur.fetchall()}
                tokens.update(got)
                if takeover:
                    taken.update(got)
            if not tokens:
                return []
            rows = self._rows(
                f"SELECT {COLUMNS} FROM tasks WHERE id IN ({', '.join('?' * len(tokens))}) "
                "ORDER BY priority, created_at, id",
                builtins.list(tokens),
            )
        return [Claim(r, tokens[r.id], r.id in taken) for r in rows]

    def _within_limits(
        self, select: str, args: builtins.list[Any], room: int, live: dict[str, int], cap: int
    ) -> builtins.list[str]:
        """Up to ``room`` candidates in queue order whose origin has a place left (``live``
        is updated); the candidates stay locked until the claim commits."""
        cur = self._db.execute(
            select.replace("SELECT id FROM", "SELECT id, origin FROM"), [*args, room * 4]
        )
        chosen: builtins.list[str] = []
        for task_id, origin in cur.fetchall():
            if len(chosen) == room:
                break
            if origin is not None:
                if live.get(origin, 0) >= cap:
                    continue
                live[origin] = live.get(origin, 0) + 1
            chosen.append(str(task_id))
        return chosen

    def renew(
        self, worker: str, tokens: Mapping[str, int], lease_s: float, *, now: float | None = None
    ) -> set[str]:
        """Extend the leases ``worker`` still holds; returns their ids. A task missing from
        the answer was claimed by another worker: stop touching it."""
        now = time.time() if now is None else now
        held: set[str] = set()
        with self._tx():
            for task_id, token in tokens.items():
                cur = self._db.execute(
                    "UPDATE tasks SET lease_expires=? WHERE id=? AND generation=? "
                    "AND lease_owner=?",
                    (now + lease_s, task_id, token, worker),
                )
                if cur.rowcount:
                    held.add(task_id)
        return held

    def release(self, task_id: str, token: int, *, requeue: str | None = None) -> bool:
        """Give a task back (finished, suspended, or the worker stops): any worker may claim
        it from now on if it is runnable. False if the claim was already lost.

        ``requeue``: the worker stopped it while it ran (shutting down, or its directory is
        not reachable there): a running task goes back to the queue with this detail."""
        sql, args = "UPDATE tasks SET lease_owner=NULL, lease_expires=NULL", [task_id, token]
        if requeue is not None:
            sql, args = f"{sql}, {_requeue('queued')}", [requeue, *args]
        with self._tx():
            cur = self._db.execute(f"{sql} WHERE id=? AND generation=?", args)
        return cur.rowcount > 0

    def release_done(self, task_id: str, token: int, lease_s: float) -> bool:
        """Give back a task this worker completed, in one statement with taking its
        completion hook when it has one: True if the hook is now this worker's to run (the
        lease is kept for it, renewed with the others). False: released, no hook."""
        now = time.time()
        with self._tx():
            row = self._db.execute(
                "UPDATE tasks SET hook_state=CASE WHEN hook_state='pending' THEN 'running' "
                "ELSE hook_state END, lease_expires=CASE WHEN hook_state='pending' THEN ? "
                "ELSE NULL END, lease_owner=CASE WHEN hook_state='pending' THEN lease_owner "
                "ELSE NULL END WHERE id=? AND generation=? RETURNING hook_state",
                (now + lease_s, task_id, token),
            ).fetchone()
        return row is not None and row[0] == "running"

    def release_many(
        self, items: Sequence[tuple[str, int, str | None, bool]], lease_s: float
    ) -> set[str]:
        """Several releases in one transaction (one commit for every task that settled
        meanwhile): ``(task id, token, requeue, done)``, as :meth:`release` or, for a task
        completed here, :meth:`release_done`. Returns the ids whose hook is now ours."""
        hooks: set[str] = set()
        with self._tx():
            for task_id, token, requeue, done in items:
                if done:
                    if self.release_done(task_id, token, lease_s):
                        hooks.add(task_id)
                else:
                    self.release(task_id, token, requeue=requeue)
        return hooks

    def move_partial(
        self, task_id: str, token: int, partial: str, snap: Snapshot, *, wall_time: float
    ) -> None:
        """A takeover's new partial file (a fresh inode, see ``_engine._takeover``) and its
        identity, on record under the claim ``token`` (LeaseLost if it is stale)."""
        with self._tx():
            count = self._update_task(
                f"UPDATE tasks SET partial=?, {SNAPSHOT_SET} WHERE id=? AND generation=?",
                (partial, *snapshot_values(snap, wall_time), task_id, token),
            )
        if count == 0:
            raise LeaseLost(f"the claim on task {task_id} (generation {token}) was lost")

    # -- completion hooks: run by one worker at a time, at least once ----------------------

    def claim_hook(
        self, task_id: str, worker: str, lease_s: float, *, now: float | None = None
    ) -> tuple[TaskRow, int] | None:
        """Take the completion hook of a finished task to run it: one whose hook is
        pending and unleased, or running under a lease that ran out (its worker died while
        it ran: it runs again). Returns the row and the generation to renew the lease by;
        None if another worker has it (or it ran)."""
        now = time.time() if now is None else now
        with self._tx():
            found = self._db.execute(
                "UPDATE tasks SET hook_state='running', lease_owner=?, lease_expires=? "
                "WHERE id=? AND phase='done' AND hook_state IN ('pending', 'running') "
                "AND (lease_owner IS NULL OR lease_expires < ?) RETURNING generation",
                (worker, now + lease_s, task_id, now),
            ).fetchone()
            row = None if found is None else self.get(task_id)
        return None if row is None or found is None else (row, int(found[0]))

    def finish_hook(self, task_id: str, worker: str, state: str) -> bool:
        """Record how the hook ended (``pending``: not run after all, for another worker);
        False if this worker's lease on it was lost (another worker runs it again)."""
        with self._tx():
            cur = self._db.execute(
                "UPDATE tasks SET hook_state=?, lease_owner=NULL, lease_expires=NULL "
                "WHERE id=? AND lease_owner=? AND hook_state='running'",
                (state, task_id, worker),
            )
        return cur.rowcount > 0

    def orphan_hooks(self, *, now: float | None = None, limit: int = 16) -> builtins.list[str]:
        """Finished tasks whose hook nobody runs: pending and unleased (the worker that
        completed the task stopped first), or whose runner's lease ran out."""
        now = time.time() if now is None else now
        cur = self._db.execute(
            "SELECT id FROM tasks WHERE hook_state IN ('pending', 'running') AND phase='done' "
            "AND (lease_owner IS NULL OR lease_expires < ?) ORDER BY finished_at LIMIT ?",
            (now, limit),
        )
        return [str(i) for (i,) in cur.fetchall()]

    def queue_depth(self, *, now: float | None = None) -> int:
        """Background tasks due and waiting for a worker."""
        now = time.time() if now is None else now
        row = self._db.execute(
            "SELECT COUNT(*) FROM tasks WHERE phase='queued' AND background=1 "
            "AND (not_before IS NULL OR not_before <= ?) "
            "AND (lease_owner IS NULL OR lease_expires < ?)",
            (now, now),
        ).fetchone()
        return 0 if row is None else int(row[0])

    def lease(self, task_id: str) -> tuple[str | None, float | None, int] | None:
        """(holder, lease expiry, generation) of a task; None if there is no such task."""
        row = self._db.execute(
            "SELECT lease_owner, lease_expires, generation FROM tasks WHERE id=?", (task_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1], int(row[2]))


class EventListener:
    """Wakes when state events are committed, by any worker on any host (LISTEN/NOTIFY on
    a connection of its own): the event stream waits on this, then reads the events table
    from its cursor. A notification says only which session; the table says what."""

    def __init__(self, url: str) -> None:
        try:
            self._con = psycopg.connect(url, autocommit=True)
            self._con.execute(f"LISTEN {EVENTS_CHANNEL}")
        except psycopg.Error as exc:
            raise StoreError(f"cannot listen for task events: {_safe(exc)}") from exc

    def wait(self, timeout: float) -> set[str]:
        """The sessions with new events: those notified within ``timeout`` seconds (empty
        if none), and any that arrived meanwhile (they are not lost between calls)."""
        sessions: set[str] = set()
        try:
            for note in self._con.notifies(timeout=timeout, stop_after=1):
                sessions.add(note.payload)
            for note in self._con.notifies(timeout=0):
                sessions.add(note.payload)
        except psycopg.Error as exc:
            raise StoreError(f"lost the task event listener: {_safe(exc)}") from exc
        return sessions

    def close(self) -> None:
        self._con.close()


class QueueListener:
    """Wakes a worker when a task becomes claimable anywhere (LISTEN bgtransfer_queue),
    when a client asks the holder of a task to suspend or cancel it (LISTEN
    bgtransfer_control), or when an origin cools down or a bandwidth cap changes (LISTEN
    bgtransfer_cooldown, bgtransfer_limits), on a connection of its own. A notification
    says only "look": the claim (or the task's row) says what."""

    CHANNELS = (QUEUE_CHANNEL, CONTROL_CHANNEL, COOLDOWN_CHANNEL, LIMITS_CHANNEL)

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        try:
            self._con = psycopg.connect(
                url, autocommit=True, connect_timeout=max(1, int(connect_timeout))
            )
            for channel in self.CHANNELS:
                self._con.execute(f"LISTEN {channel}")
        except psycopg.Error as exc:
            raise StoreError(f"cannot listen for queued tasks: {_safe(exc)}") from exc

    def wait(self, timeout: float) -> set[str]:
        """The channels notified within ``timeout`` seconds (empty: none); every pending
        notification is consumed (one look serves them all)."""
        got: set[str] = set()
        try:
            for note in self._con.notifies(timeout=timeout, stop_after=1):
                got.add(note.channel)
            for note in self._con.notifies(timeout=0):
                got.add(note.channel)
        except psycopg.Error as exc:
            raise StoreError(f"lost the queue listener: {_safe(exc)}") from exc
        return got

    def close(self) -> None:
        self._con.close()


def _store_error(exc: psycopg.OperationalError) -> StoreError:
    if isinstance(exc, psycopg.errors.DiskFull):
        return StoreFull(
            f"the task store's disk is full ({_safe(exc)}): tasks are suspended until space "
            "is freed"
        )
    return StoreError(f"the task store failed: {_safe(exc)}")


def _safe(exc: BaseException) -> str:
    """An error's text without the connection string's password (libpq may quote it)."""
    from bgtransfer._redact import redact

    return redact(" ".join(str(exc).split()))  # libpq's lines as one: one line a message
