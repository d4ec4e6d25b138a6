"""What a background fetch job request means, once for the daemon and for fleet mode: the
job a schedule request makes, the task each run gets, the job as JSON, and which job an id
(or an id prefix) names. The daemon's ``_engine._jobs.JobRunner`` and the fleet's workers
(``_fleet._jobs``) fire runs; the daemon's routes and ``_storeclient`` answer requests."""

from __future__ import annotations

import os
from typing import Any, Protocol

from bgtransfer._exceptions import InvalidRequest, TaskNotFound
from bgtransfer._scheduling import check_every
from bgtransfer._store._base import JobRow, TaskRow
from bgtransfer._store._jobs import run_outcome
from bgtransfer._tasks import build_row, new_task_id

__all__ = [
    "JOB_OPTIONS",
    "RUNS_IN_LISTING",
    "find_job",
    "job_to_wire",
    "new_job",
    "run_outcome",
    "run_row",
]

# download() options a job passes to every run.
JOB_OPTIONS = (
    "headers",
    "request_timeout",
    "resource_timeout",
    "max_attempts",
    "retry_wait",
    "max_retry_wait",
    "on_complete",
    "max_rate",
    "priority",
    "low_speed_limit",
    "low_speed_time",
)
RUNS_IN_LISTING = 20  # `jobs --json` shows the latest runs; runs() has them all


def job_to_wire(job: JobRow, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": job.id,
        "session": job.session,
        "url": job.url,
        "path": job.path,
        "every": job.every,
        "start_at": job.anchor,
        "next_run": job.next_run,
        "etag": job.etag,
        "last_modified": job.last_modified,
        "last_task": job.last_task,
        "created_at": job.created_at,
        "options": job.options,
        "runs": runs,
    }


def new_job(body: object, *, now: float) -> JobRow:
    """The job a ``POST /v1/jobs`` body asks for; InvalidRequest names what is wrong."""
    if not isinstance(body, dict):
        raise InvalidRequest("a job must be a JSON object")
    session, url, path = body.get("session"), body.get("url"), body.get("path")
    if not isinstance(session, str) or not session:
        raise InvalidRequest(f"session must be a non-empty string: {session!r}")
    unknown = set(body) - {"session", "url", "path", "every", "start_at", *JOB_OPTIONS}
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    every = check_every(body.get("every"))
    options = {k: body[k] for k in JOB_OPTIONS if body.get(k) is not None}
    if isinstance(options.get("headers"), dict):
        options["headers"] = list(options["headers"].items())
    start_at = body.get("start_at")
    # Validates url, path and every option the runs will get, as download() would.
    sample = build_row(
        session, url, path, background=True, overwrite=True, start_at=start_at,
        **{**options, "headers": [tuple(h) for h in options.get("headers", ())]},
    )  # fmt: skip
    options["headers"] = [list(h) for h in sample.spec.headers]
    if sample.spec.max_rate is not None:
        options["max_rate"] = sample.spec.max_rate
    anchor = sample.spec.start_at if sample.spec.start_at is not None else now
    return JobRow(
        id=new_task_id(),
        session=session,
        url=sample.spec.url,
        path=sample.path,
        every=every,
        anchor=anchor,
        next_run=max(anchor, now),  # the first run: at start_at, or now
        options=options,
        etag=None,
        last_modified=None,
        last_task=None,
        created_at=now,
    )


def run_row(job: JobRow) -> TaskRow:
    """A run's task: a conditional GET with the validators of the last 200 (none when the
    file is not there: then the whole thing), retried within the period at most."""
    opts = dict(job.options)
    headers = [(str(k), str(v)) for k, v in opts.pop("headers", None) or ()]
    if os.path.exists(job.path):
        if job.etag is not None:
            headers.append(("If-None-Match", job.etag))
        elif job.last_modified is not None:
            headers.append(("If-Modified-Since", job.last_modified))
    # A run is over before the next is due: retries are bounded by the period.
    opts["resource_timeout"] = min(float(opts.get("resource_timeout", job.every)), job.every)
    return build_row(
        job.session,
        job.url,
        job.path,
        background=True,
        overwrite=True,
        headers=headers,
        job_id=job.id,
        **opts,
    )


class JobStore(Protocol):
    def get_job(self, job_id: str) -> JobRow | None: ...
    def find_job_prefix(self, prefix: str) -> list[JobRow]: ...


def find_job(store: JobStore, ident: str) -> JobRow:
    """The job ``ident`` names (its id, or a prefix of at least 4 characters naming one)."""
    job = store.get_job(ident)
    if job is not None:
        return job
    found = store.find_job_prefix(ident.lower()) if len(ident) >= 4 else []
    if len(found) == 1:
        return found[0]
    why = "is ambiguous" if found else "matches no job"
    raise TaskNotFound(f"job id {ident!r} {why}", task_id=ident)
