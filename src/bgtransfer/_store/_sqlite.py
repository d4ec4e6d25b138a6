"""SQLite store: WAL, synchronous=FULL, explicit transactions, versioned schema.

FULL makes every acknowledged state change durable before the caller acts on it (renaming the
file, answering a client); progress commits are batched by the engine, so the fsync cost of
FULL is paid once per checkpoint, not per chunk.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict
from typing import Any

from bgtransfer._exceptions import (
    DestinationError,
    StoreError,
    StoreFull,
    TaskNotFound,
    TransferError,
    error_from_dict,
)
from bgtransfer._models import Phase
from bgtransfer._protocol._machine import Snapshot, Spec
from bgtransfer._protocol._schedule import priority_rank
from bgtransfer._redact import redact
from bgtransfer._store._base import StoredEvent, TaskRow
from bgtransfer._store._jobs import JobsMixin, ensure_scheduling_schema
from bgtransfer._trust import check_private_file, open_private

__all__ = ["EventRecord", "SQLiteStore", "event_record"]

SCHEMA_VERSION = 10


# One row per request the engine made: what `bgtransfer show` prints as the history. A row
# is written when the request starts (ended_at NULL, outcome "in progress"), updated at
# checkpoints and when it ends (found by ``key``); one still open when a process died is
# marked interrupted when the task is recovered.
_ATTEMPTS_COLUMNS = """(
    task_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    url TEXT NOT NULL,
    range_start INTEGER,
    status INTEGER,
    bytes INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    key TEXT,
    PRIMARY KEY (task_id, n)
)
"""
_ATTEMPTS = "CREATE TABLE attempts " + _ATTEMPTS_COLUMNS
_ATTEMPT_FIELDS = "task_id, n, started_at, ended_at, url, range_start, status, bytes, outcome"
OPEN_ATTEMPT = "in progress"

_SCHEMA = (
    """
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    path TEXT NOT NULL,
    partial TEXT NOT NULL,
    spec TEXT NOT NULL,
    overwrite INTEGER NOT NULL,
    phase TEXT NOT NULL,
    detail TEXT NOT NULL,
    "offset" INTEGER NOT NULL,
    total INTEGER,
    etag TEXT,
    last_modified TEXT,
    restarts INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    status_code INTEGER,
    error TEXT,
    active_seconds REAL NOT NULL,
    owner TEXT,
    background INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    on_complete TEXT,
    hook_state TEXT,
    acknowledged INTEGER NOT NULL DEFAULT 0,
    response TEXT,
    metadata TEXT
);
-- State changes, kept so a process that was away learns what happened (NSURLSession relaunch).
CREATE TABLE events (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    task_id TEXT NOT NULL,
    state TEXT NOT NULL,
    phase TEXT NOT NULL,
    detail TEXT NOT NULL,
    bytes_received INTEGER NOT NULL,
    bytes_expected INTEGER,
    error TEXT,
    at REAL NOT NULL
);
CREATE INDEX events_session ON events(session, cursor);
CREATE INDEX tasks_session ON tasks(session, created_at);
CREATE INDEX tasks_phase ON tasks(phase, created_at);
CREATE INDEX tasks_created ON tasks(created_at, id);
CREATE INDEX tasks_session_phase ON tasks(session, phase, created_at, id);
-- One live task per destination: two tasks writing one file is how files get corrupted.
CREATE UNIQUE INDEX tasks_live_path ON tasks(path) WHERE phase != 'done' AND partial != '';
"""
    + _ATTEMPTS
)

# Steps from each older version to the next; a fresh store gets _SCHEMA directly.
_MIGRATIONS: dict[int, list[str]] = {
    1: ["ALTER TABLE tasks ADD COLUMN response TEXT"],
    2: [_ATTEMPTS],
    # Uploads read their path: only downloads (which have a partial file) need it unique.
    3: [
        "DROP INDEX tasks_live_path",
        "CREATE UNIQUE INDEX tasks_live_path ON tasks(path) "
        "WHERE phase != 'done' AND partial != ''",
    ],
    # The queue is read from the store: find queued tasks without a scan.
    4: ["CREATE INDEX IF NOT EXISTS tasks_phase ON tasks(phase, created_at)"],
    # `ls` pages through every session in creation order.
    5: ["CREATE INDEX IF NOT EXISTS tasks_created ON tasks(created_at, id)"],
    # Segmented downloads keep per-segment offsets in the `response` JSON ("segments"); no
    # DDL, but an older bgtransfer must not read "offset" as a contiguous prefix.
    6: [],
    # Attempts are recorded when they start: ended_at may be NULL, rows found by key.
    7: [
        "CREATE TABLE attempts_v8 " + _ATTEMPTS_COLUMNS,
        f"INSERT INTO attempts_v8 ({_ATTEMPT_FIELDS}) SELECT {_ATTEMPT_FIELDS} FROM attempts",
        "DROP TABLE attempts",
        "ALTER TABLE attempts_v8 RENAME TO attempts",
    ],
    # The app contract: metadata on tasks, `tasks(state=...)` pages by index, and an
    # acknowledgement only ever covers a finished task (older versions also stored it for an
    # unfinished one, which then swallowed the completion: give those back).
    8: [
        "ALTER TABLE tasks ADD COLUMN metadata TEXT",
        "CREATE INDEX IF NOT EXISTS tasks_session_phase ON tasks(session, phase, created_at, id)",
        "UPDATE tasks SET acknowledged=0 WHERE phase != 'done'",
    ],
    # Scheduling: priority and start time on tasks; jobs, job_runs, limits, cooldowns (added
    # by ensure_scheduling_schema, which every version below 10 runs).
    9: [],
}

_COLUMNS = (
    'id, session, path, partial, spec, overwrite, phase, detail, "offset", total, etag, '
    "last_modified, restarts, attempts, failures, status_code, error, active_seconds, owner, "
    "background, idempotency_key, created_at, updated_at, finished_at, on_complete, hook_state, "
    "acknowledged, response, metadata"
)


# A state event as logged: (session, state, phase, detail, bytes_received, bytes_expected,
# error JSON, wall time); values taken when the state was entered, not when it commits.
EventRecord = tuple[str, str, str, str, int, int | None, str | None, float]


def event_record(session: str, state: str, snap: Snapshot, wall_time: float) -> EventRecord:
    return (
        session,
        state,
        snap.phase.value,
        snap.detail,
        snap.offset,
        snap.total,
        _error_json(snap.error),
        wall_time,
    )


def _error_json(err: TransferError | None) -> str | None:
    return None if err is None else json.dumps(err.to_dict())


def _response_json(snap: Snapshot) -> str:
    body = snap.response_body
    return json.dumps(
        {
            "status": snap.response_status,
            "headers": [list(h) for h in snap.response_headers],
            "reason": snap.response_reason,
            "body": None if body is None else base64.b64encode(body).decode(),
            "upload_url": snap.upload_url,
            "boot": snap.boot_id,
            "segments": [list(seg) for seg in snap.segments],
            "unsafe_sent": snap.unsafe_sent,
            "file": list(snap.partial_id),
        }
    )


def _spec_from_json(text: str) -> Spec:
    data: dict[str, Any] = json.loads(text)
    data["headers"] = tuple((str(k), str(v)) for k, v in data.get("headers", ()))
    data["form_fields"] = tuple((str(k), str(v)) for k, v in data.get("form_fields", ()))
    return Spec(**data)


class SQLiteStore(JobsMixin):
    def __init__(self, path: str, *, busy_timeout: float = 10.0) -> None:
        self.path = path
        try:
            # SQLite opens its files by name and follows links: refuse planted ones first,
            # by lstat (an existing store is never opened here, see below).
            for suffix in ("", "-wal", "-shm", "-journal"):
                check_private_file(path + suffix)
            # Create it private, but never open and close it when it exists: closing any
            # descriptor of a file drops every POSIX lock the process holds on it, SQLite's
            # too (the engine's second connection did that to the first), and another
            # process closing its connection then deletes the WAL under the daemon, taking
            # every later commit with it.
            try:
                fd = open_private(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                pass
            else:
                os.close(fd)
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the task store {path}: {exc}") from exc

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the task store {self.path} has schema version {version}, newer than this "
                f"bgtransfer understands ({SCHEMA_VERSION}); upgrade bgtransfer"
            )
        with self._tx():
            if version == 0:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
            else:
                for step in range(version, SCHEMA_VERSION):
                    for stmt in _MIGRATIONS[step]:
                        if not self._column_exists(stmt):
                            self._db.execute(stmt)
            ensure_scheduling_schema(self._db)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _column_exists(self, stmt: str) -> bool:
        """Whether ``stmt`` adds a column that is already there (ADD COLUMN has no IF NOT
        EXISTS; a store rebuilt by hand or half-migrated may have it)."""
        words = stmt.split()
        if words[:5] != ["ALTER", "TABLE", "tasks", "ADD", "COLUMN"]:
            return False
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(tasks)")}
        return words[5] in cols

    def transaction(self) -> AbstractContextManager[None]:
        """One write transaction for several ``*_in_tx`` calls (the engine's group commit)."""
        return self._tx()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        # BEGIN IMMEDIATE takes the write lock up front: a deferred BEGIN can fail with
        # SQLITE_BUSY when it upgrades, after work has been done.
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            full = self._full(exc)
            if full is None:
                raise
            raise full from exc
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException as exc:
            # A COMMIT that failed (disk full) can leave the transaction open: the next
            # BEGIN would fail for good.
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                full = self._full(exc)
                if full is not None:
                    raise full from exc
            raise

    def _full(self, exc: sqlite3.OperationalError) -> StoreFull | None:
        """StoreFull when ``exc`` means the store's disk has no room."""
        code = getattr(exc, "sqlite_errorcode", 0)
        if code != sqlite3.SQLITE_FULL:
            if code & 0xFF != sqlite3.SQLITE_IOERR:
                return None
            try:  # a write error of some other name: full only if the disk is
                st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
            except OSError:
                return None
            if st.f_bavail * st.f_frsize >= 1 << 20:
                return None
        return StoreFull(
            f"the disk of the task store {self.path} is full ({exc}): tasks are suspended "
            "until space is freed"
        )

    def insert(self, row: TaskRow) -> None:
        with self._tx():
            self._insert_in_tx(row)

    def _insert_in_tx(self, row: TaskRow) -> None:
        s = row.snap
        values = (
            row.id,
            row.session,
            row.path,
            row.partial,
            json.dumps(asdict(row.spec)),
            int(row.overwrite),
            s.phase.value,
            s.detail,
            s.offset,
            s.total,
            s.etag,
            s.last_modified,
            s.restarts,
            s.attempts,
            s.failures,
            s.status_code,
            _error_json(s.error),
            s.active_seconds,
            row.owner,
            int(row.background),
            _stored_key(row.session, row.idempotency_key),
            row.created_at,
            row.updated_at,
            row.finished_at,
            None if row.on_complete is None else json.dumps(list(row.on_complete)),
            row.hook_state,
            int(row.acknowledged),
            _response_json(s),
            None if row.metadata is None else json.dumps(row.metadata),
            priority_rank(row.spec.priority),
            row.spec.start_at,
        )
        try:
            self._db.execute(
                f"INSERT INTO tasks ({_COLUMNS}, priority, not_before) "
                f"VALUES ({', '.join('?' * len(values))})",
                values,
            )
        except sqlite3.IntegrityError as exc:
            if "idempotency_key" in str(exc):
                raise
            raise DestinationError(
                f"another unfinished task already downloads to {row.path}"
            ) from None

    def save(
        self,
        task_id: str,
        snap: Snapshot,
        *,
        wall_time: float,
        event: tuple[str, str] | None = None,
        hook_state: str | None = None,
        attempts: Sequence[dict[str, Any]] = (),
    ) -> int | None:
        """Persist a snapshot; with ``event=(session, state)`` also log a state event, and
        add the finished ``attempts`` to the history.

        Both go in one transaction, so the log never disagrees with the task row.
        Returns the new event's cursor.
        """
        events = [] if event is None else [event_record(event[0], event[1], snap, wall_time)]
        with self._tx():
            cursors = self.save_in_tx(
                task_id,
                snap,
                wall_time=wall_time,
                events=events,
                hook_state=hook_state,
                attempts=attempts,
            )
        return cursors[0] if cursors else None

    def save_in_tx(
        self,
        task_id: str,
        snap: Snapshot | None,
        *,
        wall_time: float,
        events: Sequence[EventRecord] = (),
        hook_state: str | None = None,
        attempts: Sequence[dict[str, Any]] = (),
    ) -> list[int | None]:
        """:meth:`save` inside a transaction the caller holds (group commit), with any
        number of state events (saves merged in the queue). Returns their cursors.

        ``snap=None``: only the attempts (a request that starts changes no offset)."""
        for attempt in attempts:
            self._add_attempt_in_tx(task_id, attempt)
        if snap is None:
            return []
        finished = wall_time if snap.phase is Phase.DONE else None
        if hook_state is not None:
            self._db.execute("UPDATE tasks SET hook_state=? WHERE id=?", (hook_state, task_id))
        cursors: list[int | None] = []
        for ev in events:
            cur = self._db.execute(
                "INSERT INTO events (session, task_id, state, phase, detail, bytes_received, "
                "bytes_expected, error, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ev[0], task_id, *ev[1:]),
            )
            cursors.append(cur.lastrowid)
        self._db.execute(
            'UPDATE tasks SET phase=?, detail=?, "offset"=?, total=?, etag=?, '
            "last_modified=?, restarts=?, attempts=?, failures=?, status_code=?, error=?, "
            "active_seconds=?, updated_at=?, finished_at=COALESCE(finished_at, ?), response=? "
            "WHERE id=?",
            (
                snap.phase.value,
                snap.detail,
                snap.offset,
                snap.total,
                snap.etag,
                snap.last_modified,
                snap.restarts,
                snap.attempts,
                snap.failures,
                snap.status_code,
                _error_json(snap.error),
                snap.active_seconds,
                wall_time,
                finished,
                _response_json(snap),
                task_id,
            ),
        )
        return cursors

    def events_since(self, session: str, cursor: int, limit: int = 1000) -> list[StoredEvent]:
        """The session's state events after ``cursor``, except completions that were
        acknowledged (or whose task was forgotten): an acknowledged completion never comes
        back, whatever cursor a client resumes from."""
        cur = self._db.execute(
            "SELECT e.cursor, e.session, e.task_id, e.state, e.phase, e.detail, "
            "e.bytes_received, e.bytes_expected, e.error, e.at FROM events e "
            "LEFT JOIN tasks t ON t.id = e.task_id "
            "WHERE e.session=? AND e.cursor>? "
            "AND NOT (e.phase='done' AND COALESCE(t.acknowledged, 1)=1) "
            "ORDER BY e.cursor LIMIT ?",
            (session, cursor, limit),
        )
        return [_event(r) for r in cur.fetchall()]

    def unacknowledged_completions(self, session: str) -> list[StoredEvent]:
        """The last event of every finished, unacknowledged task of the session."""
        cur = self._db.execute(
            "SELECT e.cursor, e.session, e.task_id, e.state, e.phase, e.detail, "
            "e.bytes_received, e.bytes_expected, e.error, e.at FROM events e "
            "JOIN tasks t ON t.id = e.task_id "
            "WHERE t.session=? AND t.phase='done' AND t.acknowledged=0 "
            "AND e.cursor = (SELECT MAX(cursor) FROM events WHERE task_id = t.id) "
            "ORDER BY e.cursor",
            (session,),
        )
        return [_event(r) for r in cur.fetchall()]

    def last_cursor(self) -> int:
        (value,) = self._db.execute("SELECT COALESCE(MAX(cursor), 0) FROM events").fetchone()
        return int(value)

    def acknowledge(self, task_id: str) -> bool:
        """Mark a finished task's completion handled; False (nothing stored) when the task
        has not finished, so an early acknowledgement cannot swallow its completion."""
        with self._tx():
            cur = self._db.execute(
                "UPDATE tasks SET acknowledged=1 WHERE id=? AND phase='done'", (task_id,)
            )
        return cur.rowcount > 0

    def set_hook_state(self, task_id: str, state: str) -> None:
        with self._tx():
            self._db.execute("UPDATE tasks SET hook_state=? WHERE id=?", (state, task_id))

    def pending_hooks(self) -> list[TaskRow]:
        cur = self._db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE hook_state='pending' ORDER BY finished_at"
        )
        return [self._row(r) for r in cur.fetchall()]

    def unfinished(self, *, background: bool) -> list[TaskRow]:
        cur = self._db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE phase != 'done' AND background=? "
            "ORDER BY created_at, id",
            (int(background),),
        )
        return [self._row(r) for r in cur.fetchall()]

    def next_queued(
        self,
        *,
        background: bool,
        owner: str | None,
        limit: int,
        exclude: Collection[str] = (),
    ) -> list[TaskRow]:
        """The oldest queued tasks (of ``owner``, for a foreground engine), skipping the
        ``exclude`` ids (tasks the engine already holds).

        Ids first, whole rows only for the chosen ones: decoding a row costs far more than
        finding it, and the pump runs each time a task ends.
        """
        want = limit + len(exclude)
        # Priority first (0 high .. 2 low), then age; tasks whose start time has not come
        # wait in the store (the engine sets a timer for the earliest).
        now = time.time()
        if owner is None:
            cur = self._db.execute(
                "SELECT id FROM tasks WHERE phase='queued' AND background=? "
                "AND (not_before IS NULL OR not_before <= ?) "
                "ORDER BY priority, created_at, id LIMIT ?",
                (int(background), now, want),
            )
        else:
            cur = self._db.execute(
                "SELECT id FROM tasks WHERE phase='queued' AND background=? "
                "AND (not_before IS NULL OR not_before <= ?) "
                "AND owner=? ORDER BY priority, created_at, id LIMIT ?",
                (int(background), now, owner, want),
            )
        ids = [i for (i,) in cur.fetchall() if i not in exclude][:limit]
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        cur = self._db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id IN ({marks})", ids)
        rows = {r.id: r for r in map(self._row, cur.fetchall())}
        return [rows[i] for i in ids if i in rows]

    def in_phase(self, phase: Phase, *, background: bool) -> list[TaskRow]:
        cur = self._db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE phase=? AND background=? ORDER BY created_at",
            (phase.value, int(background)),
        )
        return [self._row(r) for r in cur.fetchall()]

    def requeue_running(self, *, background: bool) -> int:
        """After a restart: every task that was running goes back to the queue, at once."""
        running = [
            p.value
            for p in (
                Phase.CONNECTING,
                Phase.TRANSFERRING,
                Phase.WAITING_RETRY,
                Phase.VERIFYING,
            )
        ]
        with self._tx():
            cur = self._db.execute(
                f"UPDATE tasks SET phase='queued', detail='queued (recovered after a restart)' "
                f"WHERE background=? AND phase IN ({', '.join('?' * len(running))})",
                (int(background), *running),
            )
        return int(cur.rowcount)

    def interrupt_queued(self, owner: str, detail: str) -> None:
        """A foreground session closes: its tasks still in the queue become suspended."""
        with self._tx():
            self._db.execute(
                "UPDATE tasks SET phase='suspended', detail=?, owner=NULL "
                "WHERE phase='queued' AND owner=?",
                (detail, owner),
            )

    def counts(self) -> dict[str, int]:
        cur = self._db.execute("SELECT phase, COUNT(*) FROM tasks GROUP BY phase")
        return {str(phase): int(n) for phase, n in cur.fetchall()}

    def add_attempt(self, task_id: str, attempt: dict[str, Any]) -> None:
        with self._tx():
            self._add_attempt_in_tx(task_id, attempt)

    def _add_attempt_in_tx(self, task_id: str, attempt: dict[str, Any]) -> None:
        key = attempt.get("key")
        if key is not None:
            cur = self._db.execute(
                "UPDATE attempts SET ended_at=?, url=?, status=?, bytes=?, outcome=? "
                "WHERE task_id=? AND key=?",
                (
                    attempt["ended_at"],
                    redact(attempt["url"]),  # the history never keeps a password
                    attempt["status"],
                    attempt["bytes"],
                    redact(attempt["outcome"]),
                    task_id,
                    key,
                ),
            )
            if cur.rowcount:
                return
        (n,) = self._db.execute(
            "SELECT COALESCE(MAX(n), 0) + 1 FROM attempts WHERE task_id=?", (task_id,)
        ).fetchone()
        self._db.execute(
            "INSERT INTO attempts (task_id, n, started_at, ended_at, url, range_start, "
            "status, bytes, outcome, key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                task_id,
                n,
                attempt["started_at"],
                attempt["ended_at"],
                redact(attempt["url"]),  # the history never keeps a password
                attempt["range_start"],
                attempt["status"],
                attempt["bytes"],
                redact(attempt["outcome"]),
                key,
            ),
        )

    def close_open_attempts(
        self, outcome: str, *, background: bool | None = None, task_id: str | None = None
    ) -> int:
        """Mark the requests a dead process left open (recovery): of one task, or of every
        background (or foreground) task. They ended at the task's last commit, at the latest."""
        where = "ended_at IS NULL"
        args: list[object] = [outcome]
        if task_id is not None:
            where += " AND task_id=?"
            args.append(task_id)
        if background is not None:
            where += " AND task_id IN (SELECT id FROM tasks WHERE background=?)"
            args.append(int(background))
        with self._tx():
            cur = self._db.execute(
                "UPDATE attempts SET outcome=?, ended_at=MAX(started_at, COALESCE("
                "(SELECT updated_at FROM tasks WHERE tasks.id=attempts.task_id), started_at)) "
                f"WHERE {where}",
                args,
            )
        return int(cur.rowcount)

    def attempts(self, task_id: str) -> list[dict[str, Any]]:
        cur = self._db.execute(
            "SELECT n, started_at, ended_at, url, range_start, status, bytes, outcome "
            "FROM attempts WHERE task_id=? ORDER BY n",
            (task_id,),
        )
        keys = ("n", "started_at", "ended_at", "url", "range_start", "status", "bytes", "outcome")
        return [dict(zip(keys, r, strict=True)) for r in cur.fetchall()]

    def set_owner(self, task_id: str, owner: str | None) -> None:
        with self._tx():
            self._db.execute("UPDATE tasks SET owner=? WHERE id=?", (owner, task_id))

    def get(self, task_id: str) -> TaskRow | None:
        cur = self._db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id=?", (task_id,))
        r = cur.fetchone()
        return None if r is None else self._row(r)

    def find_prefix(self, prefix: str) -> list[TaskRow]:
        cur = self._db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE id >= ? AND id < ? LIMIT 2",
            (prefix, prefix + "\uffff"),
        )
        return [self._row(r) for r in cur.fetchall()]

    def find_key(self, session: str, key: str) -> TaskRow | None:
        """The session's task submitted with this idempotency key (keys are per session)."""
        cur = self._db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE idempotency_key=?", (_stored_key(session, key),)
        )
        r = cur.fetchone()
        return None if r is None else self._row(r)

    def page(
        self,
        session: str | None,
        *,
        phases: Sequence[str] = (),
        since: float | None = None,
        after: str | None = None,
        limit: int = -1,
    ) -> list[TaskRow]:
        """Tasks in creation order: only those in ``phases`` (all when empty), created at or
        after ``since``, and after the task ``after`` (a page cursor: the last id of the page
        before). Each filter is served by an index (tasks_session_phase, tasks_session)."""
        where: list[str] = []
        args: list[Any] = []
        if session is not None:
            where.append("session=?")
            args.append(session)
        if phases:
            where.append(f"phase IN ({', '.join('?' * len(phases))})")
            args.extend(phases)
        if since is not None:
            where.append("created_at>=?")
            args.append(since)
        if after is not None:
            found = self._db.execute("SELECT created_at FROM tasks WHERE id=?", (after,))
            mark = found.fetchone()
            if mark is None:
                raise TaskNotFound(f"the page cursor {after!r} is not a task id")
            where.append("(created_at, id) > (?, ?)")
            args.extend((mark[0], after))
        sql = f"SELECT {_COLUMNS} FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        cur = self._db.execute(sql + " ORDER BY created_at, id LIMIT ?", (*args, limit))
        return [self._row(r) for r in cur.fetchall()]

    def list(
        self, session: str | None = None, *, limit: int = -1, offset: int = 0
    ) -> list[TaskRow]:
        """Tasks in creation order, a page at a time (``limit=-1``: all)."""
        if session is None:
            cur = self._db.execute(
                f"SELECT {_COLUMNS} FROM tasks ORDER BY created_at, id LIMIT ? OFFSET ?",
                (limit, offset),
            )
        else:
            cur = self._db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE session=? ORDER BY created_at, id "
                "LIMIT ? OFFSET ?",
                (session, limit, offset),
            )
        return [self._row(r) for r in cur.fetchall()]

    def insert_many(self, rows: Sequence[TaskRow]) -> None:
        """Several new tasks in one transaction (one fsync instead of one per task)."""
        with self._tx():
            for row in rows:
                self._insert_in_tx(row)

    def finished_ids(
        self, *, before: float | None = None, session: str | None = None
    ) -> builtins.list[str]:
        """Ids of finished tasks (that finished before ``before``, of ``session``)."""
        sql, args = "SELECT id FROM tasks WHERE phase='done'", builtins.list[object]()
        if before is not None:
            sql, args = sql + " AND finished_at <= ?", [*args, before]
        if session is not None:
            sql, args = sql + " AND session = ?", [*args, session]
        return [r[0] for r in self._db.execute(sql + " ORDER BY finished_at, id", args)]

    def remove(self, task_ids: Sequence[str]) -> builtins.list[str]:
        """Forget finished tasks: their rows, history and events, in one transaction.

        Unfinished ones among ``task_ids`` are left alone; returns the ids removed."""
        removed: builtins.list[str] = []
        with self._tx():
            for start in range(0, len(task_ids), 500):
                chunk = list(task_ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                done = [
                    r[0]
                    for r in self._db.execute(
                        f"SELECT id FROM tasks WHERE phase='done' AND id IN ({marks})", chunk
                    )
                ]
                if not done:
                    continue
                marks = ",".join("?" * len(done))
                for table, column in (("attempts", "task_id"), ("events", "task_id")):
                    self._db.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", done)
                self._db.execute(f"DELETE FROM tasks WHERE id IN ({marks})", done)
                removed += done
        return removed

    def integrity_ok(self) -> bool:
        (result,) = self._db.execute("PRAGMA integrity_check").fetchone()
        return bool(result == "ok")

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _row(r: tuple[Any, ...]) -> TaskRow:
        (
            id_,
            session,
            path,
            partial,
            spec,
            overwrite,
            phase,
            detail,
            offset,
            total,
            etag,
            last_modified,
            restarts,
            attempts,
            failures,
            status_code,
            error,
            active_seconds,
            owner,
            background,
            key,
            created_at,
            updated_at,
            finished_at,
            on_complete,
            hook_state,
            acknowledged,
            response,
            metadata,
        ) = r
        resp = json.loads(response) if response else {"status": None, "headers": []}
        snap = Snapshot(
            phase=Phase(phase),
            detail=detail,
            offset=offset,
            total=total,
            etag=etag,
            last_modified=last_modified,
            restarts=restarts,
            attempts=attempts,
            failures=failures,
            status_code=status_code,
            error=None if error is None else error_from_dict(json.loads(error)),
            active_seconds=active_seconds,
            response_status=resp["status"],
            response_headers=tuple((str(k), str(v)) for k, v in resp["headers"]),
            response_reason=resp.get("reason"),
            response_body=None if resp.get("body") is None else base64.b64decode(resp["body"]),
            upload_url=resp.get("upload_url"),
            boot_id=resp.get("boot"),
            segments=tuple((int(a), int(b), int(c)) for a, b, c in resp.get("segments", ())),
            unsafe_sent=bool(resp.get("unsafe_sent", False)),
            partial_id=tuple(int(n) for n in resp.get("file", ())),
        )
        return TaskRow(
            id=id_,
            session=session,
            path=path,
            partial=partial,
            spec=_spec_from_json(spec),
            overwrite=bool(overwrite),
            snap=snap,
            owner=owner,
            background=bool(background),
            created_at=created_at,
            updated_at=updated_at,
            finished_at=finished_at,
            idempotency_key=_caller_key(session, key),
            on_complete=None if on_complete is None else tuple(json.loads(on_complete)),
            hook_state=hook_state,
            acknowledged=bool(acknowledged),
            metadata=None if metadata is None else json.loads(metadata),
        )


# Idempotency keys are stored prefixed with their session: one key may name a task in
# each session, and the column's UNIQUE constraint then makes a submit race-safe per session.
_KEY_SEP = "\x1f"


def _stored_key(session: str, key: str | None) -> str | None:
    return None if key is None else f"{session}{_KEY_SEP}{key}"


def _caller_key(session: str, stored: str | None) -> str | None:
    prefix = f"{session}{_KEY_SEP}"
    if stored is not None and stored.startswith(prefix):
        return stored[len(prefix) :]
    return stored  # stored before keys were per session


def _event(r: tuple[Any, ...]) -> StoredEvent:
    cursor, session, task_id, state, phase, detail, got, total, error, at = r
    return StoredEvent(
        cursor=cursor,
        session=session,
        task_id=task_id,
        state=state,
        phase=phase,
        detail=detail,
        bytes_received=got,
        bytes_expected=total,
        error=None if error is None else error_from_dict(json.loads(error)),
        at=at,
    )
