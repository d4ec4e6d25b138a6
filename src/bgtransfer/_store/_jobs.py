"""Store tables for scheduling: background fetch jobs, their runs, and bandwidth limits.

Mixed into :class:`SQLiteStore`; every write is one transaction, and starting a run (its
task row, its history row and the job's next time) is a single one, so a crash can neither
lose a run nor start it twice.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from bgtransfer._store._base import TaskRow

__all__ = ["SCHEDULING_DDL", "JobRow", "JobsMixin", "ensure_scheduling_schema"]

# Schema version 10: queue order and start times on tasks, plus three tables.
_TASK_COLUMNS = {
    "priority": "ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 1",
    "not_before": "ALTER TABLE tasks ADD COLUMN not_before REAL",
}
SCHEDULING_DDL = [
    "CREATE INDEX IF NOT EXISTS tasks_queue ON tasks(phase, background, priority, created_at, id)",
    "CREATE INDEX IF NOT EXISTS tasks_not_before ON tasks(not_before) WHERE not_before IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    url TEXT NOT NULL,
    path TEXT NOT NULL,
    every REAL NOT NULL,
    anchor REAL NOT NULL,
    next_run REAL NOT NULL,
    options TEXT NOT NULL,
    etag TEXT,
    last_modified TEXT,
    last_task TEXT,
    created_at REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS jobs_next ON jobs(next_run)",
    """CREATE TABLE IF NOT EXISTS job_runs (
    job_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    scheduled_for REAL NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT NOT NULL,
    status INTEGER,
    PRIMARY KEY (job_id, n)
)""",
    "CREATE INDEX IF NOT EXISTS job_runs_task ON job_runs(task_id)",
    "CREATE TABLE IF NOT EXISTS limits (origin TEXT PRIMARY KEY, rate INTEGER NOT NULL)",
    # Origins that asked to wait (wall clock), so a restarted daemon keeps waiting.
    "CREATE TABLE IF NOT EXISTS cooldowns (origin TEXT PRIMARY KEY, until REAL NOT NULL, "
    "reason TEXT NOT NULL)",
]


def ensure_scheduling_schema(db: sqlite3.Connection) -> None:
    """Add what schema 10 has (idempotent: a store may have part of it already)."""
    have = {r[1] for r in db.execute("PRAGMA table_info(tasks)")}
    for column, stmt in _TASK_COLUMNS.items():
        if column not in have:
            db.execute(stmt)
    for stmt in SCHEDULING_DDL:
        db.execute(stmt)


_JOB_COLUMNS = (
    "id, session, url, path, every, anchor, next_run, options, etag, last_modified, "
    "last_task, created_at"
)
GLOBAL = "*"  # the limits row of the global cap


@dataclass(slots=True)
class JobRow:
    id: str
    session: str
    url: str
    path: str
    every: float
    anchor: float
    next_run: float
    options: dict[str, Any]  # download() options every run gets (headers, max_rate, ...)
    etag: str | None
    last_modified: str | None
    last_task: str | None
    created_at: float


def _job(r: tuple[Any, ...]) -> JobRow:
    (id_, session, url, path, every, anchor, next_run, options, etag, lm, last, created) = r
    return JobRow(
        id=id_,
        session=session,
        url=url,
        path=path,
        every=every,
        anchor=anchor,
        next_run=next_run,
        options=json.loads(options),
        etag=etag,
        last_modified=lm,
        last_task=last,
        created_at=created,
    )


class JobsMixin:
    _db: sqlite3.Connection

    def _tx(self) -> AbstractContextManager[None]:  # provided by SQLiteStore
        raise NotImplementedError

    def _insert_in_tx(self, row: TaskRow) -> None:  # provided by SQLiteStore
        raise NotImplementedError

    # -- jobs ------------------------------------------------------------------------------

    def add_job(self, job: JobRow) -> None:
        with self._tx():
            self._db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.session,
                    job.url,
                    job.path,
                    job.every,
                    job.anchor,
                    job.next_run,
                    json.dumps(job.options),
                    job.etag,
                    job.last_modified,
                    job.last_task,
                    job.created_at,
                ),
            )

    def get_job(self, job_id: str) -> JobRow | None:
        r = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if r is None else _job(r)

    def find_job_prefix(self, prefix: str) -> list[JobRow]:
        cur = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id >= ? AND id < ? LIMIT 2",
            (prefix, prefix + "\uffff"),
        )
        return [_job(r) for r in cur.fetchall()]

    def list_jobs(self, session: str | None = None) -> list[JobRow]:
        if session is None:
            cur = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY created_at, id")
        else:
            cur = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE session=? ORDER BY created_at, id",
                (session,),
            )
        return [_job(r) for r in cur.fetchall()]

    def due_jobs(self, now: float) -> list[JobRow]:
        cur = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE next_run <= ? ORDER BY next_run", (now,)
        )
        return [_job(r) for r in cur.fetchall()]

    def next_job_time(self) -> float | None:
        (t,) = self._db.execute("SELECT MIN(next_run) FROM jobs").fetchone()
        return None if t is None else float(t)

    def delete_job(self, job_id: str) -> None:
        """The job goes; its runs' history goes with it (their tasks stay, like any task)."""
        with self._tx():
            self._db.execute("DELETE FROM job_runs WHERE job_id=?", (job_id,))
            self._db.execute("DELETE FROM jobs WHERE id=?", (job_id,))

    def set_next_run(self, job_id: str, next_run: float) -> None:
        with self._tx():
            self._db.execute("UPDATE jobs SET next_run=? WHERE id=?", (next_run, job_id))

    def start_run(self, job: JobRow, row: TaskRow, *, scheduled_for: float, now: float) -> int:
        """Insert the run's task, its history row and the job's next time, atomically."""
        with self._tx():
            self._insert_in_tx(row)
            (n,) = self._db.execute(
                "SELECT COALESCE(MAX(n), 0) + 1 FROM job_runs WHERE job_id=?", (job.id,)
            ).fetchone()
            self._db.execute(
                "INSERT INTO job_runs (job_id, n, task_id, scheduled_for, started_at, outcome) "
                "VALUES (?, ?, ?, ?, ?, 'running')",
                (job.id, n, row.id, scheduled_for, now),
            )
            self._db.execute(
                "UPDATE jobs SET next_run=?, last_task=? WHERE id=?",
                (job.next_run, row.id, job.id),
            )
        return int(n)

    def finish_run(
        self,
        task_id: str,
        *,
        outcome: str,
        status: int | None,
        finished_at: float,
        validators: tuple[str | None, str | None] | None,
    ) -> None:
        """Record how a run ended; a 200 also keeps the new validators for the next run."""
        with self._tx():
            row = self._db.execute(
                "SELECT job_id FROM job_runs WHERE task_id=?", (task_id,)
            ).fetchone()
            if row is None:
                return
            self._db.execute(
                "UPDATE job_runs SET outcome=?, status=?, finished_at=? WHERE task_id=?",
                (outcome, status, finished_at, task_id),
            )
            if validators is not None:
                self._db.execute(
                    "UPDATE jobs SET etag=?, last_modified=? WHERE id=?", (*validators, row[0])
                )

    def unfinished_runs(self) -> list[str]:
        cur = self._db.execute("SELECT task_id FROM job_runs WHERE finished_at IS NULL")
        return [t for (t,) in cur.fetchall()]

    def job_runs(self, job_id: str) -> list[dict[str, Any]]:
        cur = self._db.execute(
            "SELECT n, task_id, scheduled_for, started_at, finished_at, outcome, status "
            "FROM job_runs WHERE job_id=? ORDER BY n",
            (job_id,),
        )
        keys = ("n", "task_id", "scheduled_for", "started_at", "finished_at", "outcome", "status")
        return [dict(zip(keys, r, strict=True)) for r in cur.fetchall()]

    # -- start times -----------------------------------------------------------------------

    def next_start(self, *, background: bool, now: float) -> float | None:
        """The earliest ``start_at`` of a queued task that is not due yet."""
        # Runs on every pump: walk the (small) start-time index from now, never the queue.
        r = self._db.execute(
            "SELECT not_before FROM tasks INDEXED BY tasks_not_before WHERE not_before > ? "
            "AND phase='queued' AND background=? ORDER BY not_before LIMIT 1",
            (now, int(background)),
        ).fetchone()
        return None if r is None else float(r[0])

    # -- origin cool-downs -----------------------------------------------------------------

    def save_cooldown(self, origin: str, until: float, reason: str, *, now: float) -> None:
        with self._tx():
            self._db.execute("DELETE FROM cooldowns WHERE until <= ?", (now,))
            self._db.execute(
                "INSERT INTO cooldowns (origin, until, reason) VALUES (?, ?, ?) "
                "ON CONFLICT(origin) DO UPDATE SET until=excluded.until, reason=excluded.reason",
                (origin, until, reason),
            )

    def cooldowns(self, now: float) -> list[tuple[str, float, str]]:
        cur = self._db.execute(
            "SELECT origin, until, reason FROM cooldowns WHERE until > ?", (now,)
        )
        return [(str(o), float(u), str(r)) for o, u, r in cur.fetchall()]

    # -- bandwidth limits ------------------------------------------------------------------

    def limits(self) -> tuple[int | None, dict[str, int]]:
        rows = self._db.execute("SELECT origin, rate FROM limits").fetchall()
        glob = next((int(r) for o, r in rows if o == GLOBAL), None)
        return glob, {str(o): int(r) for o, r in rows if o != GLOBAL}

    def set_limit(self, origin: str | None, rate: int | None) -> None:
        key = GLOBAL if origin is None else origin
        with self._tx():
            if rate is None:
                self._db.execute("DELETE FROM limits WHERE origin=?", (key,))
            else:
                self._db.execute(
                    "INSERT INTO limits (origin, rate) VALUES (?, ?) "
                    "ON CONFLICT(origin) DO UPDATE SET rate=excluded.rate",
                    (key, rate),
                )
