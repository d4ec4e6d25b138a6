"""Store tables for scheduling: background fetch jobs, their runs, and bandwidth limits.

Mixed into every SQL store; every write is one transaction, and starting a run (its task
row, its history row and the job's next time) is a single one, so a crash can neither lose
a run nor start it twice.
"""

from __future__ import annotations

from typing import Any

from bgtransfer._exceptions import Cancelled
from bgtransfer._store._base import JobRow, TaskRow
from bgtransfer._store._codec import JOB_COLUMNS, job_from, job_values
from bgtransfer._store._conn import SQLBase

__all__ = ["GLOBAL", "JobRow", "JobsMixin", "run_outcome"]

GLOBAL = "*"  # the limits row of the global cap


def run_outcome(row: TaskRow) -> str:
    """How a job's run ended, as its history says it, from its finished task."""
    err = row.snap.error
    if err is None:
        return "not modified" if row.snap.status_code == 304 else "updated"
    if isinstance(err, Cancelled):
        return "cancelled"
    return f"failed: {err.message}"


class JobsMixin(SQLBase):
    # A hint to walk the start-time index (SQLite needs it; PostgreSQL plans that itself).
    _not_before_index = ""

    def _insert_in_tx(self, row: TaskRow) -> None:  # provided by the store
        raise NotImplementedError

    # -- jobs ------------------------------------------------------------------------------

    def add_job(self, job: JobRow) -> None:
        with self._tx():
            self._db.execute(
                f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                job_values(job),
            )

    def get_job(self, job_id: str) -> JobRow | None:
        r = self._db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if r is None else job_from(r)

    def find_job_prefix(self, prefix: str) -> list[JobRow]:
        cur = self._db.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE id >= ? AND id < ? LIMIT 2",
            (prefix, prefix + "\uffff"),
        )
        return [job_from(r) for r in cur.fetchall()]

    def list_jobs(self, session: str | None = None) -> list[JobRow]:
        if session is None:
            cur = self._db.execute(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at, id")
        else:
            cur = self._db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE session=? ORDER BY created_at, id",
                (session,),
            )
        return [job_from(r) for r in cur.fetchall()]

    def due_jobs(self, now: float) -> list[JobRow]:
        cur = self._db.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE next_run <= ? ORDER BY next_run", (now,)
        )
        return [job_from(r) for r in cur.fetchall()]

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
            f"SELECT not_before FROM tasks {self._not_before_index} WHERE not_before > ? "
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
