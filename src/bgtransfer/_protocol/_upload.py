"""The state machine of one upload, sans I/O.

It shares everything about lifecycle with downloads (public states, suspend, resume, cancel,
retries with backoff, Retry-After, the resource timeout, interruption) and replaces what is
download-specific: an attempt is an upload exchange (plain or multipart: one request from byte
0; tus or the IETF draft: create once, then ask the server its offset and append from there),
and ``offset`` counts bytes the server has confirmed (or, for plain uploads, sent).

Rules beyond the base machine's
-------------------------------
* A plain or multipart upload has no server-side offset: each attempt starts from 0.
* A non-idempotent method (POST) is retried only if the caller said it is safe: an
  ``Idempotency-Key`` header or ``retry_unsafe=True``. Otherwise the first failure is final,
  because the server may have acted on it. That holds across a crash too: ``Start`` of such
  an upload persists ``unsafe_sent`` (the driver commits it before a byte leaves), and a
  start that finds it already set fails the task instead of sending again.
* Only bytes the server confirmed (tus, IETF) reset the backoff: a plain upload's sent bytes
  are lost with the connection, so a PUT answered 500 backs off like a download.
* A tus or IETF upload whose server lost it (404/410 on the upload URL) starts again from 0 as
  a new upload; that counts as a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from bgtransfer._exceptions import (
    HTTPStatusError,
    NetworkError,
    ReadError,
    TransferError,
    TransferTimeout,
)
from bgtransfer._models import Phase
from bgtransfer._protocol._actions import Action, Persist, SendRequest
from bgtransfer._protocol._defaults import CHECKPOINT_BYTES, CHECKPOINT_SECONDS
from bgtransfer._protocol._events import (
    Event,
    FinalResponse,
    Response,
    Start,
    UploadCreated,
    UploadEvent,
    UploadLost,
    UploadProgress,
)
from bgtransfer._protocol._machine import TransferMachine
from bgtransfer._protocol._ranges import parse_retry_after
from bgtransfer._protocol._retry import RETRYABLE_STATUS
from bgtransfer._protocol._transitions import UPLOAD_TRANSITIONS, Rule

__all__ = [
    "PROTOCOLS",
    "RESPONSE_BODY_CAP",
    "FinalResponse",
    "UploadCreated",
    "UploadLost",
    "UploadMachine",
    "UploadProgress",
    "idempotent",
]

RESPONSE_BODY_CAP = 64 << 10
RESUMABLE = frozenset({"tus", "ietf"})
PROTOCOLS = frozenset({"plain", "multipart", "tus", "ietf"})
_IDEMPOTENT_METHODS = frozenset({"PUT", "DELETE", "GET", "HEAD", "OPTIONS"})


def idempotent(method: str, headers: tuple[tuple[str, str], ...], retry_unsafe: bool) -> bool:
    return (
        retry_unsafe
        or method.upper() in _IDEMPOTENT_METHODS
        or any(k.lower() == "idempotency-key" for k, _ in headers)
    )


@dataclass(slots=True)
class UploadMachine(TransferMachine):
    """One upload's state: the download machine's lifecycle, its own exchange."""

    TRANSITIONS: ClassVar[Mapping[type[Any], Rule]] = UPLOAD_TRANSITIONS

    def handle(self, event: Event | UploadEvent, *, now: float) -> list[Action]:
        if isinstance(event, Response):
            raise TypeError("uploads end with FinalResponse, not Response")
        return self._apply(event, now)

    def _created(self, event: UploadCreated, now: float) -> list[Action]:
        self.snap.upload_url = event.url
        self.committed = self.snap.offset
        self._set(Phase.TRANSFERRING, "uploading", now)
        return [Persist()]

    def _lost(self, event: UploadLost, now: float) -> list[Action]:
        over = self._count_restart(now)
        if over is not None:
            return over
        self.snap.upload_url = None
        self.snap.offset = self.committed = 0
        self._set(Phase.CONNECTING, "the server lost the upload: starting it again", now)
        return [Persist()]

    def _upload_start(self, event: Start, now: float) -> list[Action]:
        if self._active_since is None:
            self._active_since = now
        if self.time_left(now) <= 0:
            return self._fail(self._resource_timeout_error(None), now)
        unsafe = self.spec.protocol not in RESUMABLE and not idempotent(
            self.spec.method, self.spec.headers, self.spec.retry_unsafe
        )
        if unsafe and self.snap.unsafe_sent:
            err = ReadError(
                "connection lost during the upload: the process sending it stopped "
                f"({self.spec.method} is not retried: the server may have acted on it; "
                "send an Idempotency-Key header or pass retry_unsafe=True)"
            )
            return self._fail(err, now)
        self.snap.attempts += 1
        self._failures_at_start = self.snap.failures
        if self.spec.protocol not in RESUMABLE:
            self.snap.offset = self.committed = 0
        self.snap.total = self.spec.source_size
        where = f"resuming from byte {self.snap.offset}" if self.snap.offset else "connecting"
        self._set(Phase.CONNECTING, where, now)
        send = SendRequest(self.spec.url, self.spec.headers, self.time_left(now))
        if unsafe:
            self.snap.unsafe_sent = True
            return [Persist(), send]  # durable before the request leaves
        return [send]

    def _progress(self, event: UploadProgress, now: float) -> list[Action]:
        offset = event.offset
        if offset > self.snap.offset and self.spec.protocol in RESUMABLE:
            self.snap.failures = 0
        # The server's word is the truth, even when it is less than we thought.
        self.snap.offset = offset
        self._set(Phase.TRANSFERRING, "uploading", now)
        if (
            abs(offset - self.committed) >= CHECKPOINT_BYTES
            or now - self._last_checkpoint >= CHECKPOINT_SECONDS
        ):
            self.committed = offset
            self._last_checkpoint = now
            return [Persist()]
        return []

    def _final(self, event: FinalResponse, now: float) -> list[Action]:
        status = event.status
        self.snap.status_code = status
        self.snap.response_status = status
        self.snap.response_headers = tuple(event.headers.items())
        self.snap.response_reason = event.reason
        self.snap.response_body = event.body[:RESPONSE_BODY_CAP]
        if 200 <= status < 300:
            self.snap.unsafe_sent = False
            self.snap.offset = self.committed = self.spec.source_size or self.snap.offset
            self._set(Phase.DONE, "completed", now)
            return [Persist()]
        if status in RETRYABLE_STATUS:
            retry_after = parse_retry_after(event.headers.get("retry-after"), event.wall_time)
            err = HTTPStatusError(f"server answered {status}", status_code=status)
            return self._failed(err, retry_after, now)
        return self._fail(
            HTTPStatusError(
                f"server answered {status} to the upload; not retried", status_code=status
            ),
            now,
        )

    def _retryable(self, err: TransferError) -> bool:
        transient = isinstance(err, NetworkError | TransferTimeout) or (
            isinstance(err, HTTPStatusError) and err.status_code in RETRYABLE_STATUS
        )
        if not transient:
            return False
        if self.spec.protocol in RESUMABLE:
            return True  # the server's offset makes a retry safe
        if idempotent(self.spec.method, self.spec.headers, self.spec.retry_unsafe):
            return True
        if isinstance(err, ReadError | TransferTimeout | NetworkError):
            err.message += (
                f" ({self.spec.method} is not retried: the server may have acted on it; "
                "send an Idempotency-Key header or pass retry_unsafe=True)"
            )
            err.args = (err.message,)
        return False


UploadMachine.HANDLERS = {
    **TransferMachine.HANDLERS,
    Start: UploadMachine._upload_start,
    UploadCreated: UploadMachine._created,
    UploadProgress: UploadMachine._progress,
    UploadLost: UploadMachine._lost,
    FinalResponse: UploadMachine._final,
}
