"""The state machine of one download, sans I/O.

Rules
-----
* ``TransferMachine.handle(event, now=...)`` is the only way to change a task. It returns the
  actions the driver must carry out, in order. It reads no clock (``now`` is the caller's
  monotonic time; a ``Response`` event carries the wall time for Retry-After dates), touches
  no file or socket, and draws jitter only from the ``rng`` it was given.
* Which events a phase accepts is data: :data:`TRANSITIONS` (:mod:`._transitions`) maps
  each event type to the phases that accept it (with the phases it can lead each of them
  to) and the phases where it is a no-op.
  ``handle()`` consults it before anything else, so an event refused there raises
  :class:`InvalidTransition` and changes nothing; ``tools/state_diagram.py`` draws the same
  table, and the stateful test checks every transition against it.
* Public state (``TaskState``) follows from the phase. COMPLETED is absorbing: any control
  event on it raises :class:`InvalidTransition` and changes nothing.
* ``offset`` is the number of valid bytes at the start of the partial file. It only grows,
  except on an explicit restart (the resource changed or the server would not resume), which
  sets it to 0 and counts in ``restarts``, and on recovery after a crash (``Recovered``: the
  bytes on disk decide).
* ``committed`` is the offset last handed to the store. The driver must make the data durable
  (fsync) before it persists, so ``committed <= durable bytes`` always holds.

Theory of operation
-------------------
QUEUED --Start--> CONNECTING --Response--> TRANSFERRING --BodyEnded--> VERIFYING
VERIFYING --Sealed (synced, saved)--> VERIFYING --Finalized (placed)--> DONE
CONNECTING/TRANSFERRING --TransportFailed or retryable status--> WAITING_RETRY --RetryDue--> QUEUED
any running phase --SuspendRequested--> SUSPENDED --ResumeRequested--> QUEUED
any non-terminal phase --CancelRequested--> CANCELING --CancelCleaned--> DONE (error Cancelled)
after a restart: --Recovered--> (the files on disk decide; see _recovery.py), then a foreground
task --Interrupted--> SUSPENDED; a daemon stopping leaves its tasks running (--Detached-->).

Segmented downloads (``Spec.segments > 1``, rules in :mod:`._segments`) stay in TRANSFERRING:
the driver reports ``SegmentsPlanned`` or ``SegmentsDeclined`` after the first response, then
``SegmentWritten`` per chunk of any connection (same checkpoints as ``DataWritten``), and
``BodyEnded`` once every segment is complete, or ``RestartRequired`` when a segment's answer
shows that the resource changed. ``offset`` is then the sum of the segments' progress, and a
resume asks for the first unfinished segment's bytes; the driver resumes the others.

What every task shares (time, control calls, retries) is :class:`._lifecycle.Lifecycle`;
this module adds the download exchange. Spec and Snapshot live in :mod:`._task`, events in
:mod:`._events`, actions in :mod:`._actions`, response classification in :mod:`._classify`,
the give-up rules in :mod:`._giveup`, request headers in :mod:`._request`, the defaults in
:mod:`._defaults`; every name is re-exported here, where the engine has always found it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from bgtransfer._exceptions import (
    HTTPStatusError,
    InvalidTransition,
    ReadError,
    RedirectError,
)
from bgtransfer._models import Phase
from bgtransfer._protocol._actions import (
    Action,
    DiscardResponse,
    Enqueue,
    Finalize,
    Persist,
    RemovePartial,
    ScheduleRetry,
    SendRequest,
    StopTransfer,
    TruncatePartial,
    WriteBody,
)
from bgtransfer._protocol._classify import (
    Decision,
    classify_response,
    content_length,
    short_body,
    too_big,
)
from bgtransfer._protocol._defaults import (
    CHECKPOINT_BYTES,
    CHECKPOINT_SECONDS,
    DEFAULT_LOW_SPEED_LIMIT,
    DEFAULT_LOW_SPEED_TIME,
    MAX_SLOW_ATTEMPTS,
    STREAM_CHECKPOINT_BYTES,
)
from bgtransfer._protocol._events import (
    BodyEnded,
    CancelCleaned,
    CancelRequested,
    DataWritten,
    Detached,
    Event,
    Failed,
    Finalized,
    FinalizeFailed,
    Interrupted,
    Recovered,
    Response,
    RestartRequired,
    ResumeRequested,
    RetryDue,
    Sealed,
    SegmentsDeclined,
    SegmentsPlanned,
    SegmentSplit,
    SegmentWritten,
    Start,
    SuspendRequested,
    TransportFailed,
    Waiting,
)
from bgtransfer._protocol._lifecycle import Lifecycle
from bgtransfer._protocol._ranges import parse_content_range, parse_retry_after, validator_changed
from bgtransfer._protocol._redirects import resolve_redirect
from bgtransfer._protocol._request import request_headers, resume_at, segment_headers
from bgtransfer._protocol._task import Snapshot, Spec
from bgtransfer._protocol._transitions import TRANSITIONS, Rule
from bgtransfer._redact import redact

__all__ = [
    "CHECKPOINT_BYTES",
    "CHECKPOINT_SECONDS",
    "DEFAULT_LOW_SPEED_LIMIT",
    "DEFAULT_LOW_SPEED_TIME",
    "MAX_SLOW_ATTEMPTS",
    "STREAM_CHECKPOINT_BYTES",
    "TRANSITIONS",
    "Action",
    "BodyEnded",
    "CancelCleaned",
    "CancelRequested",
    "DataWritten",
    "Decision",
    "Detached",
    "DiscardResponse",
    "Enqueue",
    "Event",
    "Failed",
    "Finalize",
    "FinalizeFailed",
    "Finalized",
    "Interrupted",
    "Persist",
    "Recovered",
    "RemovePartial",
    "Response",
    "RestartRequired",
    "ResumeRequested",
    "RetryDue",
    "Rule",
    "ScheduleRetry",
    "Sealed",
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
    "TruncatePartial",
    "Waiting",
    "WriteBody",
    "classify_response",
]

# The name this module had for it before the split (the classification tests use it).
_Decision = Decision


@dataclass(slots=True)
class TransferMachine(Lifecycle):
    """One download's state; :meth:`handle` is the only way to change it."""

    TRANSITIONS: ClassVar[Mapping[type[Any], Rule]] = TRANSITIONS

    _url: str = ""
    _hops: int = 0
    segments_distrusted: bool = False

    def _segments_planned(self, event: SegmentsPlanned, now: float) -> list[Action]:
        self.snap.segments = event.segments
        self._set(Phase.TRANSFERRING, f"downloading ({len(event.segments)} segments)", now)
        return [Persist()]

    def _segments_declined(self, event: SegmentsDeclined, now: float) -> list[Action]:
        self._set(Phase.TRANSFERRING, f"downloading (one connection: {event.reason})", now)
        return []

    def _segment_split(self, event: SegmentSplit, now: float) -> list[Action]:
        self.snap.segments = event.segments
        return []

    def _restart_required(self, event: RestartRequired, now: float) -> list[Action]:
        self.segments_distrusted = self.segments_distrusted or event.distrust
        return self._restart(now, event.reason)

    def _recovered(self, event: Recovered, now: float) -> list[Action]:
        if event.offset < 0:
            raise InvalidTransition(f"a recovered offset cannot be negative ({event.offset})")
        if event.placed:
            self.committed = self.snap.offset
            self._set(Phase.DONE, "completed", now)
            return [Persist()]
        self.snap.offset = self.committed = event.offset
        if event.forget:
            self.snap.total = self.snap.etag = self.snap.last_modified = None
        if event.drop_segments:
            self.snap.segments = ()
        return [TruncatePartial(event.offset)] if event.trim else []

    @property
    def resume_at(self) -> int:
        """The first byte the next request asks for (see :func:`._request.resume_at`)."""
        return resume_at(self.snap)

    def segment_request(self, index: int) -> tuple[str, tuple[tuple[str, str], ...]]:
        """URL and headers that ask for what segment ``index`` still needs (If-Range set)."""
        return self.url, segment_headers(self.spec, self.snap, self.url, index)

    @property
    def url(self) -> str:
        """The URL of the latest request (after redirects)."""
        return self._url or self.spec.url

    def _send(self, url: str, now: float) -> list[Action]:
        self._url = url
        return [SendRequest(url, request_headers(self.spec, self.snap, url), self.time_left(now))]

    def _start(self, event: Start, now: float) -> list[Action]:
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
        status, headers = event.status, event.headers
        self.snap.status_code = status
        if status == 304 and self.spec.job_id is not None:
            # A job's conditional GET: the copy on disk is current; leave it (and its mtime).
            self.committed = self.snap.offset = 0
            self.snap.segments = ()
            self._set(Phase.DONE, "not modified", now)
            return [DiscardResponse(), RemovePartial(), Persist()]
        decision = classify_response(status, headers, self.resume_at, self.snap.total)
        if decision is Decision.REDIRECT:
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
        if decision is Decision.RETRY:
            retry_after = parse_retry_after(headers.get("retry-after"), event.wall_time)
            err = HTTPStatusError(f"server answered {status}", status_code=status)
            return [DiscardResponse(), *self._failed(err, retry_after, now)]
        if decision is Decision.FAIL:
            self.snap.response_status = status
            self.snap.response_headers = tuple(headers.items())
            self.snap.response_reason = event.reason
            final = HTTPStatusError(
                f"server answered {status} for {redact(self._url)}; not retried",
                status_code=status,
            )
            return [DiscardResponse(), *self._fail(final, now)]
        if decision is Decision.DONE:
            self._set(Phase.VERIFYING, "verifying", now)
            return [DiscardResponse(), Finalize(self.snap.offset, self.spec.sha256)]
        if decision is Decision.RESTART:
            short = short_body(status, headers, self.resume_at, self.snap.total)
            if short is not None:
                return [DiscardResponse(), *self._fail(short, now)]
            return [DiscardResponse(), *self._restart(now, "the server's answer did not match")]
        if decision is Decision.FRESH:
            if self.snap.offset > 0:
                over = self._count_restart(now)
                if over is not None:
                    return [DiscardResponse(), *over]
            cr = parse_content_range(headers.get("content-range"))
            total = cr.total if cr is not None and status == 206 else content_length(headers)
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
        err = too_big(self.spec.max_bytes, size, grew=grew)
        return None if err is None else self._fail(err, now)

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

    def _data_written(self, event: DataWritten, now: float) -> list[Action]:
        return self._data(event.nbytes, now)

    def _data(self, n: int, now: float) -> list[Action]:
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

    def _body_ended(self, event: BodyEnded, now: float) -> list[Action]:
        total = self.snap.total
        if total is not None and self.snap.offset < total:
            err = ReadError(
                f"connection closed after byte {self.snap.offset} of {total} (truncated body)"
            )
            return self._failed(err, None, now)
        self._set(Phase.VERIFYING, "verifying", now)
        return [Finalize(total if total is not None else self.snap.offset, self.spec.sha256)]


TransferMachine.HANDLERS = {
    **Lifecycle.HANDLERS,
    Start: TransferMachine._start,
    Response: TransferMachine._response,
    DataWritten: TransferMachine._data_written,
    SegmentWritten: TransferMachine._segment_data,
    SegmentsPlanned: TransferMachine._segments_planned,
    SegmentsDeclined: TransferMachine._segments_declined,
    SegmentSplit: TransferMachine._segment_split,
    RestartRequired: TransferMachine._restart_required,
    BodyEnded: TransferMachine._body_ended,
    Recovered: TransferMachine._recovered,
}
