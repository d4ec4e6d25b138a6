"""What the driver tells the machine: one frozen dataclass per kind of news.

The machine (:mod:`._machine`) says in its table which phases accept each of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bgtransfer._exceptions import TransferError
from bgtransfer._protocol._segments import Segment

__all__ = [
    "BodyEnded",
    "CancelCleaned",
    "CancelRequested",
    "DataWritten",
    "Detached",
    "Event",
    "Failed",
    "FinalResponse",
    "FinalizeFailed",
    "Finalized",
    "Interrupted",
    "Recovered",
    "Response",
    "RestartRequired",
    "ResumeRequested",
    "RetryDue",
    "Sealed",
    "SegmentSplit",
    "SegmentWritten",
    "SegmentsDeclined",
    "SegmentsPlanned",
    "Start",
    "SuspendRequested",
    "TransportFailed",
    "UploadCreated",
    "UploadEvent",
    "UploadLost",
    "UploadProgress",
    "Waiting",
]


@dataclass(frozen=True, slots=True)
class Start:
    """The scheduler gave the task a slot: begin an attempt."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names
    wall_time: float = 0.0
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class DataWritten:
    nbytes: int


@dataclass(frozen=True, slots=True)
class BodyEnded:
    pass


@dataclass(frozen=True, slots=True)
class TransportFailed:
    error: TransferError
    # Aborted by the low-speed rule: the bytes it trickled do not count as progress.
    slow: bool = False


@dataclass(frozen=True, slots=True)
class RetryDue:
    pass


@dataclass(frozen=True, slots=True)
class Finalized:
    pass


@dataclass(frozen=True, slots=True)
class FinalizeFailed:
    error: TransferError


@dataclass(frozen=True, slots=True)
class SuspendRequested:
    pass


@dataclass(frozen=True, slots=True)
class ResumeRequested:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequested:
    pass


@dataclass(frozen=True, slots=True)
class CancelCleaned:
    pass


@dataclass(frozen=True, slots=True)
class Failed:
    """The driver hit an error that no retry can fix (a bug, an unusable destination)."""

    error: TransferError


@dataclass(frozen=True, slots=True)
class Interrupted:
    """Found unfinished after the process that ran it died (foreground sessions)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Waiting:
    """A queued task is held back before its attempt (an origin cool-down): say why."""

    detail: str


@dataclass(frozen=True, slots=True)
class SegmentsPlanned:
    """The first response allows ranges: download these segments in parallel."""

    segments: tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class SegmentsDeclined:
    """A segmented download stays on one connection, and why."""

    reason: str


@dataclass(frozen=True, slots=True)
class SegmentWritten:
    """``nbytes`` more bytes of segment ``index`` are in the partial file."""

    index: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class SegmentSplit:
    """A free connection took over part of a busy segment (the tiling is unchanged)."""

    segments: tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class RestartRequired:
    """A segment's answer proved the resource changed (or the server lies): start again.

    ``distrust``: the server answered a range with the wrong bytes, so the restarted
    download uses one connection (in this process; a new one may try segments again).
    """

    reason: str
    distrust: bool = False


@dataclass(frozen=True, slots=True)
class Recovered:
    """What the files on disk say about a task found unfinished after a restart.

    Decided by :func:`bgtransfer._protocol._recovery.recover`. The task resumes after
    ``offset`` bytes. ``forget``: the bytes' representation is unknown (total and validators
    are dropped; the next response starts a new download). ``drop_segments``: the segment
    table no longer describes the file. ``trim``: bytes past ``offset`` in the partial file
    may never have been synced, so they are cut off before a checkpoint could vouch for them.
    ``placed``: the finished file is already in place (only its completion was lost), so the
    task is complete. ``note`` says what was found, for the log (None: nothing to say).
    """

    offset: int
    forget: bool = False
    drop_segments: bool = False
    trim: bool = False
    placed: bool = False
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Sealed:
    """The finished partial file passed its checks and is synced (``Finalize``'s first
    half): its whole length is durable, so the snapshot saved before placement carries it.
    A crash after that save and the placement finds the file placed (see recovery)."""


@dataclass(frozen=True, slots=True)
class Detached:
    """The engine stops and leaves the task running for the next one (the daemon's shutdown).

    It made every written byte durable first, so the offset reached is the one to resume
    from; the task keeps its phase.
    """


# -- uploads ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UploadCreated:
    """The server created the upload resource (tus POST, IETF upload creation)."""

    url: str


@dataclass(frozen=True, slots=True)
class UploadProgress:
    """The server confirmed ``offset`` bytes (tus/IETF), or that many were sent (plain)."""

    offset: int


@dataclass(frozen=True, slots=True)
class UploadLost:
    """The server no longer knows the upload (404/410 on its URL)."""


@dataclass(frozen=True, slots=True)
class FinalResponse:
    """The exchange ended with this response; ``body`` is already size-capped."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    wall_time: float = 0.0
    reason: str | None = None


Event = (
    Start
    | Response
    | DataWritten
    | BodyEnded
    | TransportFailed
    | RetryDue
    | Finalized
    | FinalizeFailed
    | SuspendRequested
    | ResumeRequested
    | CancelRequested
    | CancelCleaned
    | Failed
    | Interrupted
    | SegmentsPlanned
    | SegmentsDeclined
    | SegmentWritten
    | SegmentSplit
    | RestartRequired
    | Waiting
    | Recovered
    | Detached
    | Sealed
)

UploadEvent = UploadCreated | UploadProgress | UploadLost | FinalResponse
