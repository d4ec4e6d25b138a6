"""Value types shared by every layer: the public task state and the internal phase."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from bgtransfer._exceptions import TransferError

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
