"""What the machine tells the driver to do, in order: one frozen dataclass per kind of work."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Action",
    "DiscardResponse",
    "Enqueue",
    "Finalize",
    "Persist",
    "RemovePartial",
    "ScheduleRetry",
    "SendRequest",
    "StopTransfer",
    "TruncatePartial",
    "WriteBody",
]


@dataclass(frozen=True, slots=True)
class SendRequest:
    url: str
    headers: tuple[tuple[str, str], ...]
    time_left: float  # resource time left: the driver bounds the attempt with it


@dataclass(frozen=True, slots=True)
class WriteBody:
    """Stream the current response body into the partial file from ``start``.

    ``start == 0`` with ``truncate`` means a fresh file; otherwise append at the offset.
    """

    start: int
    truncate: bool


@dataclass(frozen=True, slots=True)
class DiscardResponse:
    """Close the current response without writing a byte of it."""


@dataclass(frozen=True, slots=True)
class Persist:
    """Make written data durable (fsync), then store the snapshot."""


@dataclass(frozen=True, slots=True)
class ScheduleRetry:
    delay: float


@dataclass(frozen=True, slots=True)
class Finalize:
    expected_length: int | None
    sha256: str | None


@dataclass(frozen=True, slots=True)
class StopTransfer:
    """Abort whatever attempt or wait is in progress (suspend or cancel)."""


@dataclass(frozen=True, slots=True)
class RemovePartial:
    pass


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Ask the scheduler for a slot; it answers with ``Start``."""


@dataclass(frozen=True, slots=True)
class TruncatePartial:
    """Cut the partial file to ``size`` bytes (what lies past it may never have been synced)."""

    size: int


Action = (
    SendRequest
    | WriteBody
    | DiscardResponse
    | Persist
    | ScheduleRetry
    | Finalize
    | StopTransfer
    | RemovePartial
    | Enqueue
    | TruncatePartial
)
