"""What every store backend holds and offers: the rows, the history records, and the
:class:`Store` protocol the engine, the daemon and the session call (SQLite now, PostgreSQL
for fleet mode). ``tests/store/test_conformance.py`` is its executable definition."""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from bgtransfer._exceptions import LeaseLost, StoreError, TransferError
from bgtransfer._models import Event, Phase, TaskState
from bgtransfer._protocol._machine import Snapshot, Spec

__all__ = [
    "OPEN_ATTEMPT",
    "Attempt",
    "DuplicateKey",
    "EventRecord",
    "JobRow",
    "LeaseLost",
    "Store",
    "StoredEvent",
    "TaskRow",
]

OPEN_ATTEMPT = "in progress"  # the outcome of a request that has not ended (yet)


class DuplicateKey(StoreError, sqlite3.IntegrityError):
    """Another task of the session was submitted with this idempotency key (a race that
    the caller's lookup lost). Whatever the backend; an ``sqlite3.IntegrityError`` too,
    for callers written before there was more than one backend."""


@dataclass(slots=True)
class TaskRow:
    id: str
    session: str
    path: str
    partial: str
    spec: Spec
    overwrite: bool
    snap: Snapshot
    owner: str | None
    background: bool
    created_at: float
    updated_at: float
    finished_at: float | None = None
    idempotency_key: str | None = None
    on_complete: tuple[str, ...] | None = None
    hook_state: str | None = None
    acknowledged: bool = False
    metadata: dict[str, Any] | None = None

    def stamp(self, wall_time: float, finished: bool) -> None:
        """Take the times a save at ``wall_time`` writes (``finished_at``: the first finish
        only), so that a row kept in memory says what the store says."""
        self.updated_at = wall_time
        if finished and self.finished_at is None:
            self.finished_at = wall_time


@dataclass(frozen=True, slots=True)
class StoredEvent:
    cursor: int
    session: str
    task_id: str
    state: str
    phase: str
    detail: str
    bytes_received: int
    bytes_expected: int | None
    error: TransferError | None
    at: float

    def to_event(self) -> Event:
        """The public event of this log entry (state events are the ones the log keeps)."""
        return Event(
            task_id=self.task_id,
            session=self.session,
            kind="state",
            state=TaskState(self.state),
            detail=self.detail,
            bytes_received=self.bytes_received,
            bytes_expected=self.bytes_expected,
            error=self.error,
            cursor=self.cursor,
        )


# A state event as logged: (session, state, phase, detail, bytes_received, bytes_expected,
# error JSON, wall time); values taken when the state was entered, not when it commits.
EventRecord = tuple[str, str, str, str, int, int | None, str | None, float]


@dataclass(slots=True)
class Attempt:
    """One request the engine made: a row of the history ``bgtransfer show`` prints.

    Recorded when the request starts (``ended_at`` None, outcome :data:`OPEN_ATTEMPT`) and
    updated, found by ``key``, at checkpoints and when it ends. ``n`` is its place in the
    task's history, given by the store (0 until stored)."""

    started_at: float
    url: str
    range_start: int | None = None
    ended_at: float | None = None
    status: int | None = None
    bytes: int = 0
    outcome: str = OPEN_ATTEMPT
    key: str | None = None  # the engine's handle on a row it updates; not on the wire
    n: int = 0

    def copy(self) -> Attempt:
        """A copy the commit queue can hold while the request goes on changing this one."""
        return Attempt(
            self.started_at, self.url, self.range_start, self.ended_at, self.status,
            self.bytes, self.outcome, self.key, self.n,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The history entry as the daemon serves it (``GET /v1/tasks/{id}/attempts``)."""
        return {
            "n": self.n,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "url": self.url,
            "range_start": self.range_start,
            "status": self.status,
            "bytes": self.bytes,
            "outcome": self.outcome,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(
            started_at=float(data["started_at"]),
            url=str(data["url"]),
            range_start=None if data.get("range_start") is None else int(data["range_start"]),
            ended_at=None if data.get("ended_at") is None else float(data["ended_at"]),
            status=None if data.get("status") is None else int(data["status"]),
            bytes=int(data.get("bytes", 0)),
            outcome=str(data.get("outcome", OPEN_ATTEMPT)),
            key=None if data.get("key") is None else str(data["key"]),
            n=int(data.get("n", 0)),
        )


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


class Store(Protocol):
    """Durable task storage: exactly what the engine, the daemon and the session use.

    Every method that writes is one transaction, except the ``*_in_tx`` ones, which run
    inside :meth:`transaction` (the engine's group commit). A write returns once it is
    durable: the caller may act on it (rename a file, answer a client)."""

    @property
    def path(self) -> str:
        """Where the store is (a file, a URL): another connection opens it by this."""
        ...

    def close(self) -> None: ...

    def transaction(self) -> AbstractContextManager[None]: ...

    # -- tasks -----------------------------------------------------------------------------

    def insert(self, row: TaskRow) -> None:
        """Add a new task; DestinationError if another live download targets its path."""

    def insert_many(self, rows: Sequence[TaskRow]) -> None: ...

    def insert_in_tx(self, rows: Sequence[TaskRow]) -> None:
        """New tasks inside ``transaction()``, all or none (a savepoint): a refused row
        (DuplicateKey, DestinationError) leaves the transaction's other writes standing."""

    def save(
        self,
        task_id: str,
        snap: Snapshot,
        *,
        wall_time: float,
        event: tuple[str, str] | None = None,
        hook_state: str | None = None,
        attempts: Sequence[Attempt] = (),
        fence: int | None = None,
    ) -> int | None:
        """Persist a snapshot (the caller fsynced the data it covers), with its state event
        and history, all in one transaction. Returns the event's cursor. ``fence``: the
        generation of the caller's claim (fleet mode; LeaseLost if it is stale)."""

    def save_in_tx(
        self,
        task_id: str,
        snap: Snapshot | None,
        *,
        wall_time: float,
        events: Sequence[EventRecord] = (),
        hook_state: str | None = None,
        attempts: Sequence[Attempt] = (),
        fence: int | None = None,
    ) -> builtins.list[int | None]: ...

    def set_owner(self, task_id: str, owner: str | None) -> None: ...

    def set_hook_state(self, task_id: str, state: str) -> None: ...

    def get(self, task_id: str) -> TaskRow | None: ...

    def done_rows(self, ids: Sequence[str]) -> builtins.list[TaskRow]: ...

    def known_ids(self, ids: Sequence[str]) -> set[str]: ...

    def find_key(self, session: str, key: str) -> TaskRow | None: ...

    def find_prefix(self, prefix: str) -> builtins.list[TaskRow]: ...

    def list(
        self, session: str | None = None, *, limit: int = -1, offset: int = 0
    ) -> builtins.list[TaskRow]: ...

    def page(
        self,
        session: str | None,
        *,
        phases: Sequence[str] = (),
        since: float | None = None,
        after: str | None = None,
        limit: int = -1,
    ) -> builtins.list[TaskRow]: ...

    def pending_hooks(self) -> builtins.list[TaskRow]: ...

    def counts(self) -> dict[str, int]: ...

    def finished_ids(
        self, *, before: float | None = None, session: str | None = None
    ) -> builtins.list[str]: ...

    def remove(self, task_ids: Sequence[str]) -> builtins.list[str]: ...

    # -- the queue ---------------------------------------------------------------------------

    def next_queued(
        self,
        *,
        background: bool,
        owner: str | None,
        limit: int,
        exclude: Collection[str] = (),
        known: Mapping[str, TaskRow] | None = None,
    ) -> builtins.list[TaskRow]: ...

    def next_start(self, *, background: bool, now: float) -> float | None: ...

    def in_phase(self, phase: Phase, *, background: bool) -> builtins.list[TaskRow]: ...

    def requeue_running(self, *, background: bool) -> int: ...

    def interrupt_queued(self, owner: str, detail: str) -> None: ...

    # -- history and events ----------------------------------------------------------------

    def attempts(self, task_id: str) -> builtins.list[Attempt]: ...

    def close_open_attempts(
        self, outcome: str, *, background: bool | None = None, task_id: str | None = None
    ) -> int: ...

    def events_since(
        self, session: str, cursor: int, limit: int = 1000
    ) -> builtins.list[StoredEvent]: ...

    def unacknowledged_completions(self, session: str) -> builtins.list[StoredEvent]: ...

    def last_cursor(self) -> int: ...

    def acknowledge(self, task_id: str) -> bool: ...

    # -- scheduled jobs, bandwidth limits, origin cool-downs --------------------------------

    def add_job(self, job: JobRow) -> None: ...

    def get_job(self, job_id: str) -> JobRow | None: ...

    def find_job_prefix(self, prefix: str) -> builtins.list[JobRow]: ...

    def list_jobs(self, session: str | None = None) -> builtins.list[JobRow]: ...

    def due_jobs(self, now: float) -> builtins.list[JobRow]: ...

    def next_job_time(self) -> float | None: ...

    def delete_job(self, job_id: str) -> None: ...

    def set_next_run(self, job_id: str, next_run: float) -> None: ...

    def start_run(self, job: JobRow, row: TaskRow, *, scheduled_for: float, now: float) -> int: ...

    def finish_run(
        self,
        task_id: str,
        *,
        outcome: str,
        status: int | None,
        finished_at: float,
        validators: tuple[str | None, str | None] | None,
    ) -> None: ...

    def unfinished_runs(self) -> builtins.list[str]: ...

    def job_runs(self, job_id: str) -> builtins.list[dict[str, Any]]: ...

    def save_cooldown(self, origin: str, until: float, reason: str, *, now: float) -> None: ...

    def cooldowns(self, now: float) -> builtins.list[tuple[str, float, str]]: ...

    def limits(self) -> tuple[int | None, dict[str, int]]: ...

    def set_limit(self, origin: str | None, rate: int | None) -> None: ...
