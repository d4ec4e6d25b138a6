"""Value types shared by every layer: the public task state and the internal phase."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bgtransfer._exceptions import TransferError, error_from_dict
from bgtransfer._redact import redact

__all__ = ["Event", "Phase", "TaskState"]


class TaskState(enum.Enum):
    """The four public states, as NSURLSession and the Volt MX seed name them."""

    RUNNING = "running"
    SUSPENDED = "suspended"
    CANCELING = "canceling"
    COMPLETED = "completed"


class Phase(enum.StrEnum):
    """Why a task is in its public state; shown to people through ``Task.detail``."""

    QUEUED = "queued"
    CONNECTING = "connecting"
    TRANSFERRING = "transferring"
    WAITING_RETRY = "waiting to retry"
    VERIFYING = "verifying"
    SUSPENDED = "suspended"
    CANCELING = "canceling"
    DONE = "done"


PHASE_STATE: dict[Phase, TaskState] = {
    Phase.QUEUED: TaskState.RUNNING,
    Phase.CONNECTING: TaskState.RUNNING,
    Phase.TRANSFERRING: TaskState.RUNNING,
    Phase.WAITING_RETRY: TaskState.RUNNING,
    Phase.VERIFYING: TaskState.RUNNING,
    Phase.SUSPENDED: TaskState.SUSPENDED,
    Phase.CANCELING: TaskState.CANCELING,
    Phase.DONE: TaskState.COMPLETED,
}


@dataclass(frozen=True, slots=True)
class Event:
    """One observation of a task, as delivered by ``AsyncSession.events()``.

    ``kind`` is ``"state"`` for a change of state or phase and ``"progress"`` for bytes.
    ``cursor`` orders the durable log of state events; pass the last one seen (or the
    stream's ``cursor``) to ``events(since=...)`` to continue after it. Progress events have
    none. ``metadata`` is the task's, as given to ``download(metadata=...)``.
    """

    task_id: str
    session: str
    kind: str
    state: TaskState
    detail: str
    bytes_received: int
    bytes_expected: int | None
    error: TransferError | None
    cursor: int | None = None
    metadata: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The event as one line of the daemon's ``/v1/events`` stream carries it. Any
        password in a URL of the detail or the error is masked: the stream leaves the home."""
        err = self.error
        return {
            "cursor": self.cursor,
            "session": self.session,
            "task_id": self.task_id,
            "kind": self.kind,
            "state": self.state.value,
            "detail": redact(self.detail),
            "bytes_received": self.bytes_received,
            "bytes_expected": self.bytes_expected,
            "error": None if err is None else {**err.to_dict(), "message": redact(err.message)},
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Event:
        """The event of one stream line (:meth:`to_json`), its error as the same class."""
        err = d.get("error")
        return cls(
            task_id=d["task_id"],
            session=d["session"],
            kind=d["kind"],
            state=TaskState(d["state"]),
            detail=d["detail"],
            bytes_received=d["bytes_received"],
            bytes_expected=d["bytes_expected"],
            error=None if err is None else error_from_dict(err),
            cursor=d.get("cursor"),
            metadata=d.get("metadata"),
        )
