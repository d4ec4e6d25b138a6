"""The state machine of one download, sans I/O.

Rules
-----
* ``TransferMachine.handle(event, now=...)`` is the only way to change a task. It returns the
  actions the driver must carry out, in order. It reads no clock (``now`` is the caller's
  monotonic time; a ``Response`` event carries the wall time for Retry-After dates), touches
  no file or socket, and draws jitter only from the ``rng`` it was given.
* Public state (``TaskState``) follows from the phase. COMPLETED is absorbing: any control
  event on it raises :class:`InvalidTransition` and changes nothing.
* ``offset`` is the number of valid bytes at the start of the partial file. It only grows,
  except on an explicit restart (the resource changed or the server would not resume), which
  sets it to 0 and counts in ``restarts``.
* ``committed`` is the offset last handed to the store. The driver must make the data durable
  (fsync) before it persists, so ``committed <= durable bytes`` always holds.

Theory of operation
-------------------
QUEUED --Start--> CONNECTING --Response--> TRANSFERRING --BodyEnded--> VERIFYING --Finalized--> DONE
CONNECTING/TRANSFERRING --TransportFailed or retryable status--> WAITING_RETRY --RetryDue--> QUEUED
any running phase --SuspendRequested--> SUSPENDED --ResumeRequested--> QUEUED
any non-terminal phase --CancelRequested--> CANCELING --CancelCleaned--> DONE (error Cancelled)

Segmented downloads (``Spec.segments > 1``, rules in :mod:`._segments`) stay in TRANSFERRING:
the driver reports ``SegmentsPlanned`` or ``SegmentsDeclined`` after the first response, then
``SegmentWritten`` per chunk of any connection (same checkpoints as ``DataWritten``), and
``BodyEnded`` once every segment is complete, or ``RestartRequired`` when a segment's answer
shows that the resource changed. ``offset`` is then the sum of the segments' progress, and a
resume asks for the first unfinished segment's bytes; the driver resumes the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from bgtransfer._exceptions import (
    Cancelled,
    ContentChanged,
    FileTooLarge,
    HTTPStatusError,
    IntegrityError,
    InvalidTransition,
    NetworkError,
    ReadError,
    RedirectError,
    TransferError,
    TransferTimeout,
)
from bgtransfer._models import PHASE_STATE, Phase, TaskState
from bgtransfer._protocol._ranges import (
    choose_validator,
    parse_content_range,
    parse_retry_after,
    range_header,
    validator_changed,
)
from bgtransfer._protocol._redirects import (
    REDIRECT_STATUS,
    SENSITIVE_HEADERS,
    origin,
    resolve_redirect,
)
from bgtransfer._protocol._retry import RETRYABLE_STATUS, Backoff
from bgtransfer._protocol._segments import Segment, first_unfinished, segment_range
from bgtransfer._redact import redact

__all__ = [
    "Action",
    "BodyEnded",
    "CancelCleaned",
    "CancelRequested",
    "DataWritten",
    "DiscardResponse",
    "Enqueue",
    "Event",
    "Failed",
    "Finalize",
    "FinalizeFailed",
    "Finalized",
    "Interrupted",
    "Persist",
    "RemovePartial",
    "Response",
    "RestartRequired",
    "ResumeRequested",
    "RetryDue",
    "ScheduleRetry",
    "SegmentSplit",
    "SegmentWritten",
    "SegmentsDeclined",
    "SegmentsPlanned",
    "SendRequest",
    "Snapshot",
    "Spec",
    "Start",
    "StopTransfer",
    "SuspendRequested",
    "TransferMachine",
    "TransportFailed",
    "Waiting",
    "WriteBody",
]

# A segmented download's crash loses at most CHECKPOINT_BYTES plus one read per connection
# plus what was in the sockets (its file has holes, so no bytes past a checkpoint are kept).
CHECKPOINT_BYTES = 2 << 20
CHECKPOINT_SECONDS = 1.0
# A download on one connection checkpoints less often: after a crash of the process (not of
# the machine: see Snapshot.boot_id) the engine keeps the bytes already in the partial file,
# so this bounds only what a power loss costs, and each checkpoint is an fdatasync that
# stalls the stream (~1 s per 2 GiB at 2 MiB).
STREAM_CHECKPOINT_BYTES = 32 << 20
# The default low-speed rule (curl's --speed-limit / --speed-time, which curl leaves off): an
# attempt slower than this for that long is aborted and retried. A server that trickles a
# byte every few seconds keeps the idle timer (request_timeout) alive forever; this does not.
DEFAULT_LOW_SPEED_LIMIT = 100  # bytes per second
DEFAULT_LOW_SPEED_TIME = 120.0  # seconds
# Attempts in a row ended by the low-speed rule before the task fails and frees its slot for
# good (bytes trickled during a slow attempt do not reset the backoff either).
MAX_SLOW_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Spec:
    """What the caller asked for; never changes during the task's life."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()
    request_timeout: float = 60.0
    resource_timeout: float = 7 * 86400.0
    sha256: str | None = None
    low_speed_limit: int = DEFAULT_LOW_SPEED_LIMIT
    low_speed_time: float = DEFAULT_LOW_SPEED_TIME
    max_redirects: int = 10
    max_restarts: int = 5
    max_attempts: int | None = None
    # Give up once attempts have failed for this long (active seconds) with no byte between
    # them: fail fast when a transfer cannot even start. None: retry until resource_timeout.
    retry_for: float | None = None
    retry_wait: float = 1.0
    max_retry_wait: float = 120.0
    # Uploads (kind == "upload"): the source is the task's path.
    kind: str = "download"
    method: str = "GET"
    protocol: str = "plain"
    source_size: int | None = None
    source_mtime_ns: int | None = None
    field_name: str = "file"
    form_fields: tuple[tuple[str, str], ...] = ()
    retry_unsafe: bool = False
    chunk_size: int = 8 << 20
    segments: int = 1  # connections for one download (aria2c -s); 1 is the plain path
    max_bytes: int | None = None  # curl --max-filesize: a bigger download fails
    # Scheduling (see _schedule.py): no request before ``start_at`` (wall clock, seconds
    # since the epoch), at most ``max_rate`` body bytes per second, queue order.
    start_at: float | None = None
    max_rate: int | None = None
    priority: str = "normal"
    # A run of a background fetch job: its 304 is a success ("not modified"), file untouched.
    job_id: str | None = None
    # Uploads: where the whole body of the final answer goes (response_body keeps 64 KiB).
    response_path: str | None = None
    # The submitting process's umask: the finished file gets 0666 & ~umask (curl, wget).
    # None: the umask of the process that runs the engine.
    umask: int | None = None


@dataclass(slots=True)
class Snapshot:
    """Everything about a task's progress that must survive a restart."""

    phase: Phase = Phase.QUEUED
    detail: str = "queued"
    offset: int = 0
    total: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    restarts: int = 0
    attempts: int = 0
    failures: int = 0
    status_code: int | None = None
    error: TransferError | None = None
    active_seconds: float = 0.0
    # The response that began the file (or the final error response): what an XHR-style
    # caller sees as status and headers, not the 206s of later resumes.
    response_status: int | None = None
    response_headers: tuple[tuple[str, str], ...] = ()
    response_reason: str | None = None  # the reason phrase the server sent with it
    response_body: bytes | None = None  # uploads: the server's answer, size-capped
    upload_url: str | None = None  # tus / IETF: where the upload lives on the server
    # Segmented downloads: (start, pos, end) per segment, committed with ``offset``.
    segments: tuple[Segment, ...] = ()
    # The machine's boot when this snapshot was taken (set by the engine): while it is
    # unchanged, bytes written after the snapshot are still in the page cache after a crash
    # of the process, and resume may keep them.
    boot_id: str | None = None
    # Uploads with a method that is not idempotent: committed before the request leaves,
    # cleared once its outcome is known. Found set at a start, the request may have reached
    # the server (the process died mid-request), so it is not sent again.
    unsafe_sent: bool = False
    # Who the partial file is (set by the engine): the directory's (device, inode), then the
    # file's (device, inode, owner) once created. A reopen that finds anything else discards
    # it rather than adopt it; empty: nothing recorded yet.
    partial_id: tuple[int, ...] = ()


# -- events ---------------------------------------------------------------------------------


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
)

# -- actions --------------------------------------------------------------------------------


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
)


class _Decision(Enum):
    REDIRECT = "redirect"
    APPEND = "append"
    FRESH = "fresh"
    RESTART = "restart"
    DONE = "done"
    RETRY = "retry"
    FAIL = "fail"


def classify_response(
    status: int, headers: Mapping[str, str], offset: int, total: int | None
) -> _Decision:
    """Decide what to do with a response to a request for bytes ``offset-``.

    Bytes are appended only when the server proves they start exactly at ``offset`` of the
    same representation we started (RFC 9110 §14.4, curl test 1156, aria2 isRangeSatisfied).
    """
    if status in REDIRECT_STATUS:
        return _Decision.REDIRECT
    if status in RETRYABLE_STATUS:
        return _Decision.RETRY
    cr = parse_content_range(headers.get("content-range"))
    if status == 416:
        if offset > 0 and cr is not None and cr.first is None:
            if cr.total == offset and (total is None or total == offset):
                return _Decision.DONE
            return _Decision.RESTART
        return _Decision.FAIL
    if status == 206 or (status == 200 and cr is not None and offset > 0):
        if cr is None or cr.first is None:
            return _Decision.RESTART
        same_total = total is None or cr.total is None or cr.total == total
        if cr.first == offset and same_total:
            # From byte 0 it is a whole new download: validators and total must be recorded.
            return _Decision.FRESH if offset == 0 else _Decision.APPEND
        if cr.first == 0 and cr.total is not None and cr.last == cr.total - 1:
            return _Decision.FRESH
        return _Decision.RESTART
    if 200 <= status < 300:
        return _Decision.FRESH
    return _Decision.FAIL


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = (headers.get("content-length") or "").strip()
    # ASCII digits only: str.isdigit() accepts "²", which int() rejects.
    if not value or len(value) > 19 or not value.isascii() or not value.isdigit():
        return None
    return int(value)


@dataclass(slots=True)
class TransferMachine:
    spec: Spec
    snap: Snapshot = field(default_factory=Snapshot)
    rng: Callable[[], float] = lambda: 0.5
    # In-memory only: reset when rebuilt from a snapshot.
    committed: int = 0
    in_flight: bool = False
    _url: str = ""
    _hops: int = 0
    _active_since: float | None = None
    _last_checkpoint: float = 0.0
    _failures_at_start: int = 0
    segments_distrusted: bool = False
    _failing_since: float | None = None  # active seconds at the first failure of a run

    @classmethod
    def from_snapshot(
        cls, spec: Spec, snap: Snapshot, *, rng: Callable[[], float] | None = None
    ) -> TransferMachine:
        m = cls(spec=spec, snap=replace(snap))
        if rng is not None:
            m.rng = rng
        m.committed = snap.offset
        return m

    # -- reading ---------------------------------------------------------------------------

    @property
    def state(self) -> TaskState:
        return PHASE_STATE[self.snap.phase]

    @property
    def terminal(self) -> bool:
        return self.snap.phase is Phase.DONE

    def elapsed(self, now: float) -> float:
        """Resource time used so far: active time only, suspended time excluded."""
        running = 0.0 if self._active_since is None else max(0.0, now - self._active_since)
        return self.snap.active_seconds + running

    def time_left(self, now: float) -> float:
        return self.spec.resource_timeout - self.elapsed(now)

    def snapshot(self, now: float) -> Snapshot:
        """The snapshot to persist, with active time accounted up to ``now``."""
        out = replace(self.snap)
        out.active_seconds = self.elapsed(now)
        out.offset = self.committed
        return out

    # -- the one entry point ---------------------------------------------------------------

    def handle(self, event: Event, *, now: float) -> list[Action]:
        match event:
            case Start():
                return self._start(now)
            case Response():
                return self._response(event, now)
            case DataWritten(nbytes=n):
                return self._data(n, now)
            case SegmentWritten():
                return self._segment_data(event, now)
            case SegmentsPlanned(segments=segs):
                self._expect(Phase.TRANSFERRING, event)
                self.snap.segments = segs
                self._set(Phase.TRANSFERRING, f"downloading ({len(segs)} segments)", now)
                return [Persist()]
            case SegmentsDeclined(reason=why):
                self._expect(Phase.TRANSFERRING, event)
                self._set(Phase.TRANSFERRING, f"downloading (one connection: {why})", now)
                return []
            case SegmentSplit(segments=segs):
                self._expect(Phase.TRANSFERRING, event)
                self.snap.segments = segs
                return []
            case RestartRequired(reason=why, distrust=distrust):
                self._expect(Phase.TRANSFERRING, event)
                self.in_flight = False
                self.segments_distrusted = self.segments_distrusted or distrust
                return self._restart(now, why)
            case BodyEnded():
                return self._body_ended(now)
            case TransportFailed(error=err, slow=slow):
                return self._failed(err, None, now, slow=slow)
            case RetryDue():
                self._expect(Phase.WAITING_RETRY, event)
                self._set(Phase.QUEUED, "queued (retry due)", now)
                return [Enqueue()]
            case Finalized():
                self._expect(Phase.VERIFYING, event)
                self.in_flight = False
                self.committed = self.snap.offset
                self._set(Phase.DONE, "completed", now)
                return [Persist()]
            case FinalizeFailed(error=err):
                self._expect(Phase.VERIFYING, event)
                self.in_flight = False
                return self._fail(err, now)
            case SuspendRequested():
                return self._suspend(now)
            case ResumeRequested():
                return self._resume(now)
            case CancelRequested():
                return self._cancel(now)
            case CancelCleaned():
                self._expect(Phase.CANCELING, event)
                self.snap.error = Cancelled("the task was cancelled")
                self._set(Phase.DONE, "cancelled", now)
                return [Persist()]
            case Waiting(detail=detail):
                self._expect(Phase.QUEUED, event)
                self.snap.detail = detail
                return [Persist()]
            case Failed(error=err):
                if self.terminal:
                    return []
                return self._fail(err, now)
            case Interrupted(reason=reason):
                if self.terminal or self.snap.phase is Phase.SUSPENDED:
                    return []
                if self.snap.phase is Phase.CANCELING:
                    return [RemovePartial()]
                self.in_flight = False
                # The driver made the written bytes durable before this event; keep them all.
                self.committed = self.snap.offset
                self._set(Phase.SUSPENDED, reason, now)
                return [Persist()]
        raise InvalidTransition(f"unknown event {event!r}")  # pragma: no cover - exhaustive

    # -- helpers ---------------------------------------------------------------------------

    def _expect(self, phase: Phase | tuple[Phase, ...], event: object) -> None:
        phases = phase if isinstance(phase, tuple) else (phase,)
        if self.snap.phase not in phases:
            raise InvalidTransition(
                f"{type(event).__name__} is not allowed while the task is {self.snap.phase}"
            )

    def _set(self, phase: Phase, detail: str, now: float) -> None:
        active_before = self.snap.phase not in (Phase.SUSPENDED, Phase.DONE)
        active_after = phase not in (Phase.SUSPENDED, Phase.DONE)
        if active_before and not active_after:
            self.snap.active_seconds = self.elapsed(now)
            self._active_since = None
        elif active_after and self._active_since is None:
            self._active_since = now
        self.snap.phase = phase
        self.snap.detail = detail

    def _request_headers(self, url: str) -> tuple[tuple[str, str], ...]:
        same_origin = origin(url) == origin(self.spec.url)
        out = [
            (k, v)
            for k, v in self.spec.headers
            if same_origin or k.lower() not in SENSITIVE_HEADERS
        ]
        out.append(("Accept-Encoding", "identity"))
        if self.snap.offset > 0:
            i = first_unfinished(self.snap.segments)
            if i is not None:
                out.append(("Range", segment_range(self.snap.segments[i])))
            else:
                out.append(("Range", range_header(self.resume_at)))
            validator = self._validator()
            if validator is not None:
                out.append(("If-Range", validator))
        return tuple(out)

    def _validator(self) -> str | None:
        """If-Range for a resume; the Date of the response that began the file decides
        whether its Last-Modified is strong enough (RFC 9110 §13.1.5)."""
        date = next((v for k, v in self.snap.response_headers if k.lower() == "date"), None)
        return choose_validator(self.snap.etag, self.snap.last_modified, date)

    @property
    def resume_at(self) -> int:
        """The first byte the next request asks for: the offset, or with segments the
        position of the first unfinished one (the whole length when all are complete)."""
        if not self.snap.segments:
            return self.snap.offset
        i = first_unfinished(self.snap.segments)
        if i is None:
            return self.snap.segments[-1][2] if self.snap.total is None else self.snap.total
        return self.snap.segments[i][1]

    def segment_request(self, index: int) -> tuple[str, tuple[tuple[str, str], ...]]:
        """URL and headers that ask for what segment ``index`` still needs (If-Range set)."""
        url = self.url
        out = [(k, v) for k, v in self._request_headers(url) if k not in ("Range", "If-Range")]
        out.append(("Range", segment_range(self.snap.segments[index])))
        validator = self._validator()
        if validator is not None:
            out.append(("If-Range", validator))
        return url, tuple(out)

    @property
    def url(self) -> str:
        """The URL of the latest request (after redirects)."""
        return self._url or self.spec.url

    def _send(self, url: str, now: float) -> list[Action]:
        self._url = url
        self.in_flight = True
        return [SendRequest(url, self._request_headers(url), self.time_left(now))]

    def _start(self, now: float) -> list[Action]:
        self._expect(Phase.QUEUED, Start())
        if self._active_since is None:
            self._active_since = now
        if self.time_left(now) <= 0:
            return self._fail(self._resource_timeout_error(None), now)
        self.snap.attempts += 1
        self._failures_at_start = self.snap.failures
        self._hops = 0
        where = f"resuming from byte {self.resume_at}" if self.snap.offset else "connecting"
        self._set(Phase.CONNECTING, where, now)
        return self._send(self.spec.url, now)

    def _response(self, event: Response, now: float) -> list[Action]:
        self._expect(Phase.CONNECTING, event)
        status, headers = event.status, event.headers
        self.snap.status_code = status
        if status == 304 and self.spec.job_id is not None:
            # A job's conditional GET: the copy on disk is current; leave it (and its mtime).
            self.in_flight = False
            self.committed = self.snap.offset = 0
            self.snap.segments = ()
            self._set(Phase.DONE, "not modified", now)
            return [DiscardResponse(), RemovePartial(), Persist()]
        decision = classify_response(status, headers, self.resume_at, self.snap.total)
        if decision is _Decision.REDIRECT:
            target, why = resolve_redirect(self._url, headers.get("location"))
            if target is None:
                return [DiscardResponse(), *self._fail(RedirectError(why, status_code=status), now)]
            self._hops += 1
            if self._hops > self.spec.max_redirects:
                loop = RedirectError(
                    f"too many redirects (more than {self.spec.max_redirects}); last to "
                    f"{redact(target)}",
                    status_code=status,
                )
                return [DiscardResponse(), *self._fail(loop, now)]
            return [DiscardResponse(), *self._send(target, now)]
        if decision is _Decision.RETRY:
            retry_after = parse_retry_after(headers.get("retry-after"), event.wall_time)
            err = HTTPStatusError(f"server answered {status}", status_code=status)
            return [DiscardResponse(), *self._failed(err, retry_after, now)]
        if decision is _Decision.FAIL:
            self.snap.response_status = status
            self.snap.response_headers = tuple(headers.items())
            self.snap.response_reason = event.reason
            final = HTTPStatusError(
                f"server answered {status} for {redact(self._url)}; not retried",
                status_code=status,
            )
            return [DiscardResponse(), *self._fail(final, now)]
        if decision is _Decision.DONE:
            self.in_flight = False
            self._set(Phase.VERIFYING, "verifying", now)
            return [DiscardResponse(), Finalize(self.snap.offset, self.spec.sha256)]
        if decision is _Decision.RESTART:
            short = self._short_body(status, headers)
            if short is not None:
                return [DiscardResponse(), *self._fail(short, now)]
            return [DiscardResponse(), *self._restart(now, "the server's answer did not match")]
        if decision is _Decision.FRESH:
            if self.snap.offset > 0:
                over = self._count_restart(now)
                if over is not None:
                    return [DiscardResponse(), *over]
            cr = parse_content_range(headers.get("content-range"))
            total = cr.total if cr is not None and status == 206 else _content_length(headers)
            too_big = self._too_big(total, now)
            if too_big is not None:
                return [DiscardResponse(), *too_big]
            self.snap.total = total
            self.snap.response_status = 200 if status == 206 else status
            self.snap.response_reason = "OK" if status == 206 else event.reason
            self.snap.response_headers = tuple(
                (k, v) for k, v in headers.items() if k != "content-range"
            )
            self.snap.etag = headers.get("etag")
            self.snap.last_modified = headers.get("last-modified")
            self.snap.offset = 0
            self.snap.segments = ()
            self.committed = 0
            self._last_checkpoint = now
            self._set(Phase.TRANSFERRING, "downloading", now)
            # Persist first: the validator and length are on record before the first byte
            # (WriteBody runs to the end of the body before the next action is looked at).
            return [Persist(), WriteBody(0, truncate=True)]
        # APPEND
        changed = validator_changed(self.snap.etag, self.snap.last_modified, headers)
        if changed is not None:
            # The server ignored If-Range (S3 does) and sent another version's bytes.
            return [DiscardResponse(), *self._restart(now, changed)]
        cr = parse_content_range(headers.get("content-range"))
        if self.snap.total is None and cr is not None:
            too_big = self._too_big(cr.total, now)
            if too_big is not None:
                return [DiscardResponse(), *too_big]
            self.snap.total = cr.total
        self._last_checkpoint = now
        at = self.resume_at
        self._set(Phase.TRANSFERRING, f"downloading (resumed at byte {at})", now)
        return [WriteBody(at, truncate=False)]

    def _too_big(self, size: int | None, now: float, *, grew: bool = False) -> list[Action] | None:
        """Fail once a download is known to exceed ``max_bytes`` (curl --max-filesize):
        announced (before a byte is written) or grown past it (no length announced)."""
        limit = self.spec.max_bytes
        if limit is None or size is None or size <= limit:
            return None
        err = FileTooLarge(
            f"the download grew past max_bytes ({limit} bytes); not retried"
            if grew
            else f"the server announced {size} bytes, more than max_bytes ({limit}); not retried"
        )
        return self._fail(err, now)

    def _short_body(self, status: int, headers: Mapping[str, str]) -> IntegrityError | None:
        """A 416 saying the resource ends exactly where our bytes end, though its first
        answer promised more: the server's Content-Length was larger than its body. That is
        a short body (the server's fault, the same each time), not a changing resource."""
        cr = parse_content_range(headers.get("content-range"))
        have, promised = self.resume_at, self.snap.total
        if status != 416 or cr is None or cr.total != have or promised is None:
            return None
        if not 0 < have < promised:
            return None
        return IntegrityError(
            f"short body: the server sent {have} bytes, its Content-Length said {promised}, "
            f"and it answers a request for the rest with 416 (it has only {have})"
        )

    def _count_restart(self, now: float) -> list[Action] | None:
        self.snap.restarts += 1
        if self.snap.restarts > self.spec.max_restarts:
            err = ContentChanged(
                f"resource keeps changing: restarted {self.spec.max_restarts} times "
                "(the server's answers to range requests did not match the first download)"
            )
            return self._fail(err, now)
        return None

    def _restart(self, now: float, why: str) -> list[Action]:
        over = self._count_restart(now)
        if over is not None:
            return over
        self.snap.offset = 0
        self.snap.segments = ()
        self.committed = 0
        self.snap.total = None
        self.snap.etag = None
        self.snap.last_modified = None
        self._set(Phase.CONNECTING, f"restarting from 0: {why}", now)
        return [Persist(), *self._send(self.spec.url, now)]

    def _data(self, n: int, now: float) -> list[Action]:
        self._expect(Phase.TRANSFERRING, DataWritten(n))
        self.snap.offset += n
        if n > 0:
            self.snap.failures = 0
            self._failing_since = None
        too_big = self._too_big(self.snap.offset, now, grew=True)
        if too_big is not None:
            return too_big
        every = CHECKPOINT_BYTES if self.snap.segments else STREAM_CHECKPOINT_BYTES
        if (
            self.snap.offset - self.committed >= every
            or now - self._last_checkpoint >= CHECKPOINT_SECONDS
        ):
            self.committed = self.snap.offset
            self._last_checkpoint = now
            return [Persist()]
        return []

    def _segment_data(self, event: SegmentWritten, now: float) -> list[Action]:
        self._expect(Phase.TRANSFERRING, event)
        segs = self.snap.segments
        if not 0 <= event.index < len(segs):
            raise InvalidTransition(f"no segment {event.index} (there are {len(segs)})")
        start, pos, end = segs[event.index]
        if pos + event.nbytes > end:
            raise InvalidTransition(f"segment {event.index} would grow past its end {end}")
        self.snap.segments = (
            *segs[: event.index],
            (start, pos + event.nbytes, end),
            *segs[event.index + 1 :],
        )
        return self._data(event.nbytes, now)

    def _body_ended(self, now: float) -> list[Action]:
        self._expect(Phase.TRANSFERRING, BodyEnded())
        total = self.snap.total
        if total is not None and self.snap.offset < total:
            err = ReadError(
                f"connection closed after byte {self.snap.offset} of {total} (truncated body)"
            )
            return self._failed(err, None, now)
        self.in_flight = False
        self._set(Phase.VERIFYING, "verifying", now)
        return [Finalize(total if total is not None else self.snap.offset, self.spec.sha256)]

    def _failed(
        self, err: TransferError, retry_after: float | None, now: float, *, slow: bool = False
    ) -> list[Action]:
        self._expect((Phase.CONNECTING, Phase.TRANSFERRING), TransportFailed(err))
        self.in_flight = False
        self.committed = self.snap.offset
        if not self._retryable(err):
            return self._fail(err, now)
        if self.time_left(now) <= 0:
            return self._fail(self._resource_timeout_error(err), now)
        if slow:
            # What a too-slow attempt trickled is no progress: the backoff keeps growing.
            self.snap.failures = max(self.snap.failures, self._failures_at_start)
        self.snap.failures += 1
        if slow and self.snap.failures >= MAX_SLOW_ATTEMPTS:
            err.message = (
                f"{err.message}, {self.snap.failures} attempts in a row; not retried "
                "(low_speed_limit=0 turns the low-speed rule off)"
            )
            err.args = (err.message,)
            return self._fail(err, now)
        if self.spec.max_attempts is not None and self.snap.attempts >= self.spec.max_attempts:
            err.message = f"{err.message} (gave up after {self.snap.attempts} attempts)"
            err.args = (err.message,)
            return self._fail(err, now)
        backoff = Backoff(self.spec.retry_wait, self.spec.max_retry_wait)
        delay = backoff.delay(self.snap.failures, self.rng())
        if retry_after is not None:
            delay = retry_after
        if self.spec.retry_for is not None:
            if self._failing_since is None:
                self._failing_since = self.elapsed(now)
            failing = self.elapsed(now) - self._failing_since
            if failing >= self.spec.retry_for:
                err.message = (
                    f"{err.message} (gave up after {self.snap.attempts} attempts in "
                    f"{failing:.0f} s without a byte: retry_for is {self.spec.retry_for:g} s)"
                )
                err.args = (err.message,)
                return self._fail(err, now)
            delay = min(delay, self.spec.retry_for - failing)  # the last try at the deadline
        left = self.time_left(now)
        if delay >= left:
            if retry_after is not None and isinstance(err, HTTPStatusError):
                err.message = (
                    f"{err.message} with Retry-After {retry_after:.0f} s, beyond the "
                    f"{max(left, 0):.0f} s left of resource_timeout; not retried"
                )
                err.args = (err.message,)
                return self._fail(err, now)
            return self._fail(self._resource_timeout_error(err), now)
        cause = f"after {err.status_code}" if err.status_code else f"after {err.message}"
        self._set(Phase.WAITING_RETRY, f"retrying in {delay:.1f} s {cause}", now)
        return [Persist(), ScheduleRetry(delay)]

    def _retryable(self, err: TransferError) -> bool:
        return isinstance(err, NetworkError | TransferTimeout) or (
            isinstance(err, HTTPStatusError) and err.status_code in RETRYABLE_STATUS
        )

    def _resource_timeout_error(self, last: TransferError | None) -> TransferTimeout:
        msg = f"resource timeout of {self.spec.resource_timeout:g} s reached"
        if last is not None:
            msg += f"; last error: {last.message}"
        return TransferTimeout(msg)

    def _fail(self, err: TransferError, now: float) -> list[Action]:
        # A failed task can never be resumed, so its partial file is only litter
        # (curl --remove-on-error); bytes_received keeps how far it got.
        self.in_flight = False
        self.snap.error = err
        self.snap.unsafe_sent = False
        self.committed = self.snap.offset
        self._set(Phase.DONE, f"failed: {err.message}", now)
        return [StopTransfer(), RemovePartial(), Persist()]

    def _suspend(self, now: float) -> list[Action]:
        if self.snap.phase is Phase.SUSPENDED:
            return []
        if self.terminal or self.snap.phase is Phase.CANCELING:
            raise InvalidTransition(f"cannot suspend a task that is {self.state.value}")
        self.in_flight = False
        self.committed = self.snap.offset
        # Resuming is the caller's own decision to send the request again.
        self.snap.unsafe_sent = False
        self._set(Phase.SUSPENDED, "suspended", now)
        return [StopTransfer(), Persist()]

    def _resume(self, now: float) -> list[Action]:
        if self.state is TaskState.RUNNING:
            return []
        if self.snap.phase is not Phase.SUSPENDED:
            raise InvalidTransition(f"cannot resume a task that is {self.state.value}")
        self._set(Phase.QUEUED, "queued", now)
        return [Persist(), Enqueue()]

    def _cancel(self, now: float) -> list[Action]:
        if self.snap.phase is Phase.CANCELING:
            return []
        if self.terminal:
            raise InvalidTransition("cannot cancel a task that is completed")
        self.in_flight = False
        self.snap.offset = 0
        self.snap.segments = ()
        self.committed = 0
        self._set(Phase.CANCELING, "canceling", now)
        return [StopTransfer(), Persist(), RemovePartial()]
