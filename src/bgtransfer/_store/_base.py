"""The narrow interface every store backend implements (SQLite now, PostgreSQL later)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bgtransfer._protocol._machine import Snapshot, Spec

__all__ = ["Store", "TaskRow"]


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


class Store(Protocol):
    def insert(self, row: TaskRow) -> None:
        """Add a new task; raises DestinationError if another live task targets its path."""

    def save(self, task_id: str, snap: Snapshot, *, wall_time: float) -> None:
        """Persist a snapshot durably (the caller fsynced the data it covers)."""

    def set_owner(self, task_id: str, owner: str | None) -> None: ...

    def get(self, task_id: str) -> TaskRow | None: ...

    def list(self, session: str | None = None) -> list[TaskRow]: ...

    def find_key(self, key: str) -> TaskRow | None: ...

    def close(self) -> None: ...
