"""The narrow interface every store backend implements (SQLite now, PostgreSQL later)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bgtransfer._exceptions import TransferError
from bgtransfer._protocol._machine import Snapshot, Spec

__all__ = ["Store", "StoredEvent", "TaskRow"]


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


class Store(Protocol):
    def insert(self, row: TaskRow) -> None:
        """Add a new task; raises DestinationError if another live task targets its path."""

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
        """Persist a snapshot durably (the caller fsynced the data it covers)."""

    def set_owner(self, task_id: str, owner: str | None) -> None: ...

    def get(self, task_id: str) -> TaskRow | None: ...

    def list(self, session: str | None = None) -> list[TaskRow]: ...

    def find_key(self, session: str, key: str) -> TaskRow | None: ...

    def close(self) -> None: ...
