"""The jobs requests of the daemon's protocol (``POST/GET /v1/jobs``, ``GET/DELETE
/v1/jobs/{id}``) answered on a fleet's PostgreSQL store: the same JSON as the daemon's.

A client only stores and reads jobs; the fleet's workers fire them (``_fleet._jobs``).
Before a job is shown, the end of its last run is recorded if its task finished, so what a
client reads is as current as the daemon's answer (whoever looks first records it, once).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._jobspec import RUNS_IN_LISTING, find_job, job_to_wire, new_job
from bgtransfer._store._base import JobRow
from bgtransfer._store._postgres import PostgresStore

__all__ = ["answer"]

Run = Callable[..., Awaitable[Any]]

_JOB = re.compile(r"/v1/jobs/([^/]+)")


async def answer(
    db: PostgresStore, run: Run, method: str, path: str, body: Any, q: dict[str, str]
) -> Any:
    if path == "/v1/jobs":
        if method == "POST":
            return await run(_schedule, db, body)
        if method == "GET":
            return await run(_listing, db, q.get("session"))
    found = _JOB.fullmatch(path)
    if found is not None:
        ident = unquote(found[1])
        if method == "GET":
            return await run(_one, db, ident)
        if method == "DELETE":
            return await run(_remove, db, ident)
    raise InvalidRequest(f"no such request: {method} {path}")


def _wire(db: PostgresStore, job: JobRow, *, all_runs: bool = False) -> dict[str, Any]:
    runs = db.job_runs(job.id)
    return job_to_wire(job, runs if all_runs else runs[-RUNS_IN_LISTING:])


def _schedule(db: PostgresStore, body: object) -> dict[str, Any]:
    job = new_job(body, now=time.time())  # the target is checked here, as a submit's
    db.schedule_job(job)
    return _wire(db, job)


def _listing(db: PostgresStore, session: str | None) -> list[dict[str, Any]]:
    db.settle_runs()
    return [_wire(db, j) for j in db.list_jobs(session)]


def _one(db: PostgresStore, ident: str) -> dict[str, Any]:
    job = find_job(db, ident)
    if db.settle_runs(job.id):
        job = find_job(db, job.id)  # a 200 gave it new validators
    return _wire(db, job, all_runs=True)


def _remove(db: PostgresStore, ident: str) -> dict[str, Any]:
    job = find_job(db, ident)
    db.delete_job(job.id)
    return {"id": job.id, "removed": True}
