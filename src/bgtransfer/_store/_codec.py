"""Rows to column values and back, shared by every SQL backend (one codec per shape)."""

from __future__ import annotations

import base64
import json
from typing import Any

from bgtransfer._exceptions import TransferError, error_from_dict
from bgtransfer._models import Phase
from bgtransfer._protocol._machine import Snapshot, Spec
from bgtransfer._protocol._schedule import priority_rank
from bgtransfer._store._base import Attempt, EventRecord, JobRow, StoredEvent, TaskRow

__all__ = [
    "ATTEMPT_SELECT",
    "COLUMNS",
    "EVENT_SELECT",
    "INSERT_COLUMNS",
    "JOB_COLUMNS",
    "SNAPSHOT_SET",
    "attempt_from",
    "error_json",
    "event_from",
    "event_record",
    "job_from",
    "job_values",
    "snapshot_values",
    "stored_key",
    "task_from",
    "task_values",
]

COLUMNS = (
    'id, session, path, partial, spec, overwrite, phase, detail, "offset", total, etag, '
    "last_modified, restarts, attempts, failures, status_code, error, active_seconds, owner, "
    "background, idempotency_key, created_at, updated_at, finished_at, on_complete, hook_state, "
    "acknowledged, response, metadata"
)
# Written on insert only: the queue order, read by the store, never by a row.
INSERT_COLUMNS = COLUMNS + ", priority, not_before"

# What a save changes; ``finished_at`` keeps the first time the task reached DONE.
SNAPSHOT_SET = (
    'phase=?, detail=?, "offset"=?, total=?, etag=?, last_modified=?, restarts=?, attempts=?, '
    "failures=?, status_code=?, error=?, active_seconds=?, updated_at=?, "
    "finished_at=COALESCE(finished_at, ?), response=?"
)

EVENT_SELECT = (
    "e.cursor, e.session, e.task_id, e.state, e.phase, e.detail, e.bytes_received, "
    "e.bytes_expected, e.error, e.at"
)
ATTEMPT_SELECT = "n, started_at, ended_at, url, range_start, status, bytes, outcome"
JOB_COLUMNS = (
    "id, session, url, path, every, anchor, next_run, options, etag, last_modified, "
    "last_task, created_at"
)


def error_json(err: TransferError | None) -> str | None:
    return None if err is None else json.dumps(err.to_dict())


def event_record(session: str, state: str, snap: Snapshot, wall_time: float) -> EventRecord:
    return (
        session,
        state,
        snap.phase.value,
        snap.detail,
        snap.offset,
        snap.total,
        error_json(snap.error),
        wall_time,
    )


def _response_json(snap: Snapshot) -> str:
    body = snap.response_body
    out: dict[str, Any] = {
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
    if snap.refreshes:
        # A refreshed URL (issue 17); absent in rows that never had one, as before.
        out["refresh"] = {
            "url": snap.refreshed_url,
            "headers": [list(h) for h in snap.refreshed_headers],
            "count": snap.refreshes,
            "expires": snap.refresh_expires,
        }
    return json.dumps(out)


def _refresh_fields(resp: dict[str, Any]) -> dict[str, Any]:
    got = resp.get("refresh")
    if not got:
        return {}
    expires = got.get("expires")
    return {
        "refreshed_url": got.get("url"),
        "refreshed_headers": tuple((str(k), str(v)) for k, v in got.get("headers", ())),
        "refreshes": int(got.get("count", 0)),
        "refresh_expires": None if expires is None else float(expires),
    }


def snapshot_values(snap: Snapshot, wall_time: float) -> tuple[Any, ...]:
    """The values of :data:`SNAPSHOT_SET`, in its order."""
    return (
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
        error_json(snap.error),
        snap.active_seconds,
        wall_time,
        wall_time if snap.phase is Phase.DONE else None,
        _response_json(snap),
    )


def task_values(row: TaskRow) -> tuple[Any, ...]:
    """The values of :data:`INSERT_COLUMNS`, in its order."""
    s = row.snap
    return (
        row.id,
        row.session,
        row.path,
        row.partial,
        row.spec.to_json(),
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
        error_json(s.error),
        s.active_seconds,
        row.owner,
        int(row.background),
        stored_key(row.session, row.idempotency_key),
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


def task_from(r: tuple[Any, ...]) -> TaskRow:
    """A row selected as :data:`COLUMNS`."""
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
        **_refresh_fields(resp),
    )
    return TaskRow(
        id=id_,
        session=session,
        path=path,
        partial=partial,
        spec=Spec.from_json(spec),
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


def stored_key(session: str, key: str | None) -> str | None:
    return None if key is None else f"{session}{_KEY_SEP}{key}"


def _caller_key(session: str, stored: str | None) -> str | None:
    prefix = f"{session}{_KEY_SEP}"
    if stored is not None and stored.startswith(prefix):
        return stored[len(prefix) :]
    return stored  # stored before keys were per session


def event_from(r: tuple[Any, ...]) -> StoredEvent:
    """A row selected as :data:`EVENT_SELECT`."""
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


def attempt_from(r: tuple[Any, ...]) -> Attempt:
    """A row selected as :data:`ATTEMPT_SELECT`."""
    n, started_at, ended_at, url, range_start, status, nbytes, outcome = r
    return Attempt(
        started_at=started_at,
        url=url,
        range_start=range_start,
        ended_at=ended_at,
        status=status,
        bytes=nbytes,
        outcome=outcome,
        n=n,
    )


def job_values(job: JobRow) -> tuple[Any, ...]:
    """The values of :data:`JOB_COLUMNS`, in its order."""
    return (
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
    )


def job_from(r: tuple[Any, ...]) -> JobRow:
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
