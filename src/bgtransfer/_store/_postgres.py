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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg
import psycopg.errors

from bgtransfer._exceptions import StoreError, StoreFull, StoreUnavailable
from bgtransfer._models import Phase
from bgtransfer._store._base import TaskRow
from bgtransfer._store._codec import COLUMNS
from bgtransfer._store._pgcontrol import ControlMixin
from bgtransfer._store._pgschema import EVENTS_CHANNEL, MIGRATIONS, SCHEMA_VERSION
from bgtransfer._store._sql import SQLStore

__all__ = ["SCHEMA_VERSION", "Claim", "EventListener", "PostgresStore", "WorkerRow"]

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


@dataclass(frozen=True, slots=True)
class WorkerRow:
    name: str
    host: str
    pid: int
    started_at: float
    last_seen: float
    held: int  # tasks it holds an unexpired lease on


@dataclass(frozen=True, slots=True)
class Claim:
    row: TaskRow
    token: int  # the generation: pass it as ``fence`` to every commit of the task


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


class PostgresStore(SQLStore, ControlMixin):
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
        self, worker: str, lease_s: float, *, limit: int = 1, now: float | None = None
    ) -> builtins.list[Claim]:
        """Take up to ``limit`` runnable background tasks for ``worker`` until ``now +
        lease_s``: due queued tasks, and tasks whose holder's lease ran out. Each claim
        raises the task's generation, which fences off any earlier holder.

        A task a worker runs always holds its lease (released when it stops running), so
        an unleased task that is not queued belongs to nobody's queue and is not taken."""
        now = time.time() if now is None else now
        take = "UPDATE tasks SET lease_owner=?, lease_expires=?, generation=generation+1 "
        tokens: dict[str, int] = {}
        with self._tx():
            # Two walks of an index each, never a scan of the queue: first the tasks whose
            # holder's lease ran out (begun work: resume it), then the queue's head.
            cur = self._db.execute(
                f"{take} WHERE id IN ({CLAIM_EXPIRED}) RETURNING id, generation",
                (worker, now + lease_s, now, *_TAKEOVER, limit),
            )
            tokens.update((str(i), int(g)) for i, g in cur.fetchall())
            if len(tokens) < limit:
                cur = self._db.execute(
                    f"{take} WHERE id IN ({CLAIM_QUEUED}) RETURNING id, generation",
                    (worker, now + lease_s, now, limit - len(tokens)),
                )
                tokens.update((str(i), int(g)) for i, g in cur.fetchall())
            if not tokens:
                return []
            rows = self._rows(
                f"SELECT {COLUMNS} FROM tasks WHERE id IN ({', '.join('?' * len(tokens))}) "
                "ORDER BY priority, created_at, id",
                builtins.list(tokens),
            )
        return [Claim(r, tokens[r.id]) for r in rows]

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

    def release(self, task_id: str, token: int) -> bool:
        """Give a task back (finished, suspended, or the worker stops): any worker may claim
        it from now on if it is runnable. False if the claim was already lost."""
        with self._tx():
            cur = self._db.execute(
                "UPDATE tasks SET lease_owner=NULL, lease_expires=NULL WHERE id=? AND generation=?",
                (task_id, token),
            )
        return cur.rowcount > 0

    def heartbeat(self, name: str, host: str, pid: int, *, now: float | None = None) -> None:
        """The worker is alive (it renews its leases at the same pace)."""
        now = time.time() if now is None else now
        with self._tx():
            self._db.execute(
                "INSERT INTO workers (name, host, pid, started_at, last_seen) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET host=excluded.host, "
                "pid=excluded.pid, last_seen=excluded.last_seen, started_at=CASE WHEN "
                "workers.pid = excluded.pid THEN workers.started_at ELSE excluded.started_at END",
                (name, host, pid, now, now),
            )

    def forget_worker(self, name: str) -> None:
        """A worker that stops cleanly leaves the list (its leases were released)."""
        with self._tx():
            self._db.execute("DELETE FROM workers WHERE name=?", (name,))

    def workers(self, *, now: float | None = None) -> builtins.list[WorkerRow]:
        """Every worker heard of, with the number of tasks it holds a live lease on."""
        now = time.time() if now is None else now
        cur = self._db.execute(
            "SELECT w.name, w.host, w.pid, w.started_at, w.last_seen, COUNT(t.id) "
            "FROM workers w LEFT JOIN tasks t ON t.lease_owner = w.name AND t.lease_expires >= ? "
            "GROUP BY w.name, w.host, w.pid, w.started_at, w.last_seen ORDER BY w.name",
            (now,),
        )
        return [
            WorkerRow(str(n), str(h), int(p), float(s), float(seen), int(held))
            for n, h, p, s, seen, held in cur.fetchall()
        ]

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
