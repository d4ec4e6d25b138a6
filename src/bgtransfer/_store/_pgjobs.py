"""Fleet mode's background fetch jobs in PostgreSQL: every worker may fire a due job, and
each occurrence fires once across the fleet.

A worker locks the due jobs with ``FOR UPDATE SKIP LOCKED`` (two workers never wait for
each other, nor take the same job) and, in the same transaction, records how the job's last
run ended, inserts the new run's task (queued: its insert notifies ``bgtransfer_queue``, any
worker claims it), its history row and the job's next time. The next worker to look finds
the job not due any more (PostgreSQL re-checks ``next_run`` on the committed row before it
locks it), so an occurrence can neither be lost (the transaction commits whole or not at
all) nor fire twice, whichever worker dies when.

How a run ended is read from its task whenever someone looks (a worker before it fires the
next run, a client that lists the jobs): whoever looks first writes it, once.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from bgtransfer._exceptions import TransferError
from bgtransfer._models import Phase
from bgtransfer._protocol._schedule import next_run
from bgtransfer._store._base import JobRow, TaskRow
from bgtransfer._store._codec import COLUMNS, JOB_COLUMNS, job_from, task_from
from bgtransfer._store._jobs import JobsMixin, run_outcome

__all__ = ["FIRE_BATCH", "JOBS_CHANNEL", "Fired", "FleetJobsMixin"]

JOBS_CHANNEL = "bgtransfer_jobs"  # NOTIFY (no payload): a job was scheduled
FIRE_BATCH = 32  # jobs fired per transaction at most (a catch-up after downtime: several)


@dataclass(frozen=True, slots=True)
class Fired:
    """What became of one due occurrence: ``task_id`` the run's task (None: no run now),
    ``note`` why not; ``left``: this worker could not make the run (its directory is not
    reachable here), the occurrence stays due for another worker."""

    job_id: str
    task_id: str | None
    note: str = ""
    left: bool = False


class FleetJobsMixin(JobsMixin):
    def schedule_job(self, job: JobRow) -> None:
        """Store a new job and wake the workers' job loops (when the commit lands)."""
        with self._tx():
            self.add_job(job)
            self._db.execute("SELECT pg_notify(?, '')", (JOBS_CHANNEL,))

    def next_job_due(self, exclude: Collection[str] = ()) -> float | None:
        skip, args = _skip(exclude)
        (t,) = self._db.execute(
            f"SELECT MIN(next_run) FROM jobs WHERE TRUE {skip}", args
        ).fetchone()
        return None if t is None else float(t)

    def fire_due(
        self,
        build: Callable[[JobRow], TaskRow],
        *,
        now: float,
        rng: Callable[[], float],
        exclude: Collection[str] = (),
        limit: int = FIRE_BATCH,
    ) -> builtins.list[Fired]:
        """Fire the jobs due at ``now`` that no other worker is firing (up to ``limit``),
        in one transaction; ``build`` makes a run's task (it raises TransferError where this
        worker cannot: the job is left due, for another worker). ``exclude``: job ids not
        to take now."""
        skip, args = _skip(exclude)
        with self._tx():
            jobs = [
                job_from(r)
                for r in self._db.execute(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE next_run <= ? {skip} "
                    "ORDER BY next_run LIMIT ? FOR UPDATE SKIP LOCKED",
                    (now, *args, limit),
                ).fetchall()
            ]
            return [self._fire(job, build, now, rng) for job in jobs]

    def _fire(
        self, job: JobRow, build: Callable[[JobRow], TaskRow], now: float, rng: Callable[[], float]
    ) -> Fired:
        scheduled_for = job.next_run
        following = next_run(job.anchor, job.every, now, rng())
        last = self._settle_last(job)
        if last is not None and last.snap.phase is not Phase.DONE:
            self.set_next_run(job.id, following)
            return Fired(job.id, None, f"previous run {job.last_task} still going; skipped")
        try:
            row = build(job)
        except TransferError as exc:
            return Fired(job.id, None, exc.message, left=True)
        job.next_run = following
        try:
            self.start_run(job, row, scheduled_for=scheduled_for, now=now)  # a savepoint
        except TransferError as exc:  # another task downloads to the file: skipped
            self.set_next_run(job.id, following)
            return Fired(job.id, None, exc.message)
        return Fired(job.id, row.id)

    # -- how runs ended ----------------------------------------------------------------------

    def settle_runs(self, job_id: str | None = None) -> int:
        """Record the end of every run whose task finished (or was removed) and whose end
        is not on record yet; returns how many. Only a job's last run can be unfinished
        (a run is skipped while the previous one goes on), so this walks the jobs."""
        sql = (
            "SELECT r.task_id FROM jobs j JOIN job_runs r ON r.job_id = j.id "
            "AND r.task_id = j.last_task WHERE r.finished_at IS NULL"
        )
        with self._tx():
            if job_id is None:
                ids = [str(t) for (t,) in self._db.execute(sql).fetchall()]
            else:
                found = self._db.execute(f"{sql} AND j.id=?", (job_id,)).fetchall()
                ids = [str(t) for (t,) in found]
            if not ids:
                return 0
            rows = {r.id: r for r in self._tasks(ids)}
            n = 0
            for task_id in ids:
                row = rows.get(task_id)
                if (row is None or row.snap.phase is Phase.DONE) and self._finish_in_tx(
                    task_id, row
                ) is not False:
                    n += 1
            return n

    def _tasks(self, ids: builtins.list[str]) -> builtins.list[TaskRow]:
        cur = self._db.execute(f"SELECT {COLUMNS} FROM tasks WHERE id = ANY(?)", (ids,))
        return [task_from(r) for r in cur.fetchall()]

    def _settle_last(self, job: JobRow) -> TaskRow | None:
        """The task of the job's last run (None: no run yet, or its task was removed), its
        end recorded if it finished; the job takes the validators of a 200."""
        if job.last_task is None:
            return None
        found = self._tasks([job.last_task])
        row = found[0] if found else None
        if row is None or row.snap.phase is Phase.DONE:
            got = self._finish_in_tx(job.last_task, row)
            if isinstance(got, tuple):
                job.etag, job.last_modified = got
        return row

    def _finish_in_tx(
        self, task_id: str, row: TaskRow | None
    ) -> tuple[str | None, str | None] | bool:
        """Record a run's end once (False: on record already); a 200 gives the job its
        validators (returned)."""
        if row is None:
            outcome, status, at, validators = "lost", None, time.time(), None
        else:
            outcome, status = run_outcome(row), row.snap.status_code
            at = row.finished_at or time.time()
            validators = (row.snap.etag, row.snap.last_modified) if outcome == "updated" else None
        got = self._db.execute(
            "UPDATE job_runs SET outcome=?, status=?, finished_at=? "
            "WHERE task_id=? AND finished_at IS NULL RETURNING job_id",
            (outcome, status, at, task_id),
        ).fetchone()
        if got is None:
            return False
        if validators is None:
            return True
        self._db.execute(
            "UPDATE jobs SET etag=?, last_modified=? WHERE id=?", (*validators, got[0])
        )
        return validators


def _skip(exclude: Collection[str]) -> tuple[str, builtins.list[str]]:
    ids = builtins.list(exclude)
    if not ids:
        return "", []
    return f"AND id NOT IN ({', '.join('?' * len(ids))})", ids
