"""Background fetch jobs (the seed's): the daemon fetches a URL every period, by itself.

Each run is an ordinary background task (visible in ``ls`` and ``events()``, tied to its job
by ``job``) doing a conditional GET: If-None-Match with the last ETag, else
If-Modified-Since. A 304 finishes the task as "not modified" without touching the file; a
200 replaces it the way every download lands (partial, fsync, rename). When runs are due
comes from :func:`bgtransfer._protocol._schedule.next_run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from bgtransfer._engine._engine import Engine
from bgtransfer._exceptions import DestinationError, InvalidRequest
from bgtransfer._jobspec import (
    JOB_OPTIONS,
    RUNS_IN_LISTING,
    job_to_wire,
    new_job,
    run_outcome,
    run_row,
)
from bgtransfer._models import Phase
from bgtransfer._protocol._schedule import next_run
from bgtransfer._store._base import TaskRow
from bgtransfer._store._jobs import JobRow

# What a job request means lives in _jobspec (shared with fleet mode); the names stay here.
__all__ = ["JOB_OPTIONS", "RUNS_IN_LISTING", "JobRunner", "job_to_wire", "run_outcome"]

log = logging.getLogger("bgtransfer.jobs")


class JobRunner:
    def __init__(self, engine: Engine, *, rng: Callable[[], float] = random.random) -> None:
        self.engine = engine
        self.store = engine.store
        self.rng = rng
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.reconcile()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="bgtransfer-jobs")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def reconcile(self) -> None:
        """Runs whose end the daemon did not record before it died: record it now."""
        for task_id in self.store.unfinished_runs():
            row = self.store.get(task_id)
            if row is None:
                self.store.finish_run(
                    task_id, outcome="lost", status=None, finished_at=time.time(), validators=None
                )
            elif row.snap.phase is Phase.DONE:
                self.finished(row)

    async def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # a bad job must not stop the others
                log.exception("background fetch jobs: tick failed")
            nxt = self.store.next_job_time()
            # Capped, so a wall-clock step (NTP, suspend) is noticed within a minute.
            delay = 60.0 if nxt is None else min(max(nxt - time.time(), 0.0), 60.0)
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), delay + 0.005)

    # -- runs ------------------------------------------------------------------------------

    def tick(self) -> None:
        now = time.time()
        for job in self.store.due_jobs(now):
            self._fire(job, now)

    def _fire(self, job: JobRow, now: float) -> None:
        scheduled_for = job.next_run
        job.next_run = next_run(job.anchor, job.every, now, self.rng())
        if job.last_task is not None:
            last = self.store.get(job.last_task)
            if last is not None and last.snap.phase is not Phase.DONE:
                log.info("job %s: previous run %s still going; skipped", job.id, job.last_task)
                self.store.set_next_run(job.id, job.next_run)
                return
        try:
            row = self._run_row(job)
            row.owner = self.engine.owner.token
            self.store.start_run(job, row, scheduled_for=scheduled_for, now=now)
        except (InvalidRequest, DestinationError) as exc:
            log.warning("job %s: run not started: %s", job.id, exc.message)
            self.store.set_next_run(job.id, job.next_run)
            return
        log.info("job %s: run %s started", job.id, row.id)
        self.engine._pump()

    def _run_row(self, job: JobRow) -> TaskRow:
        return run_row(job)

    def finished(self, row: TaskRow) -> None:
        """A run's task completed: record its outcome (and a 200's validators)."""
        if row.spec.job_id is None:
            return
        outcome = run_outcome(row)
        validators = None
        if outcome == "updated":
            validators = (row.snap.etag, row.snap.last_modified)
        self.store.finish_run(
            row.id,
            outcome=outcome,
            status=row.snap.status_code,
            finished_at=row.finished_at or time.time(),
            validators=validators,
        )

    # -- the control API -------------------------------------------------------------------

    def add(self, body: dict[str, Any]) -> JobRow:
        job = new_job(body, now=time.time())
        self.store.add_job(job)
        self._poke.set()
        return job

    def wire(self, job: JobRow, *, all_runs: bool = False) -> dict[str, Any]:
        runs = self.store.job_runs(job.id)
        return job_to_wire(job, runs if all_runs else runs[-RUNS_IN_LISTING:])
