"""What a task is (:class:`Spec`) and how far it got (:class:`Snapshot`), with their codecs.

Both cross process boundaries (the store, the daemon's task body), so each has exactly one
JSON form: ``to_json()`` / ``from_json()`` (and the ``to_dict()`` / ``from_dict()`` they are
built on, for a caller that embeds them in a larger document). Decoding refuses what it
cannot read with :class:`InvalidRequest`; keys a snapshot written by an older version lacks
take their defaults.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from bgtransfer._exceptions import InvalidRequest, TransferError, error_from_dict
from bgtransfer._models import Phase
from bgtransfer._protocol._defaults import (
    CHUNK_SIZE,
    DEFAULT_LOW_SPEED_LIMIT,
    DEFAULT_LOW_SPEED_TIME,
    MAX_REDIRECTS,
    MAX_RESTARTS,
    MAX_RETRY_WAIT,
    REQUEST_TIMEOUT,
    RESOURCE_TIMEOUT,
    RETRY_WAIT,
)
from bgtransfer._protocol._segments import Segment

__all__ = ["Snapshot", "Spec"]


@dataclass(frozen=True, slots=True)
class Spec:
    """What the caller asked for; never changes during the task's life."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()
    request_timeout: float = REQUEST_TIMEOUT
    resource_timeout: float = RESOURCE_TIMEOUT
    sha256: str | None = None
    low_speed_limit: int = DEFAULT_LOW_SPEED_LIMIT
    low_speed_time: float = DEFAULT_LOW_SPEED_TIME
    max_redirects: int = MAX_REDIRECTS
    max_restarts: int = MAX_RESTARTS
    max_attempts: int | None = None
    # Give up once attempts have failed for this long (active seconds) with no byte between
    # them: fail fast when a transfer cannot even start. None: retry until resource_timeout.
    retry_for: float | None = None
    retry_wait: float = RETRY_WAIT
    max_retry_wait: float = MAX_RETRY_WAIT
    # Uploads (kind == "upload"): the source is the task's path.
    kind: str = "download"
    method: str = "GET"
    protocol: str = "plain"
    source_size: int | None = None
    source_mtime_ns: int | None = None
    field_name: str = "file"
    form_fields: tuple[tuple[str, str], ...] = ()
    retry_unsafe: bool = False
    chunk_size: int = CHUNK_SIZE
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
    # Mirrors (issue 17): every source of the one file, ``url`` first; empty: ``url`` alone.
    urls: tuple[str, ...] = ()
    # A refresh command (an argv, no shell) the daemon runs for a new URL when this one
    # expires; foreground sessions take a callable instead, which is not stored.
    refresh: tuple[str, ...] | None = None
    # ``adopt``: the partial file (another store's, or one that outlived its store) this
    # download resumes instead of a new hidden file; its record gave the first snapshot.
    adopt: str | None = None
    # Integrity (issue 17): the caller's whole-file checksums besides ``sha256``, each
    # "algorithm=hex" (sha256, sha384, sha512, sha1, md5), and a piece list
    # (algorithm, piece size, one hex digest per piece): a bad piece is fetched again alone.
    checksums: tuple[str, ...] = ()
    pieces: tuple[str, int, tuple[str, ...]] | None = None

    # A PEM file of CA certificates that verifies this task's HTTPS servers instead of the
    # system store (curl --cacert); chain and hostname are checked as ever.
    ca_bundle: str | None = None

    def __post_init__(self) -> None:
        # JSON has no tuples: a decoded spec (store, wire) brings lists.
        checksums: object = self.checksums
        if isinstance(checksums, list):
            object.__setattr__(self, "checksums", tuple(checksums))
        pieces: object = self.pieces
        if isinstance(pieces, list | tuple) and not isinstance(pieces[2], tuple):
            algorithm, size, hashes = pieces
            object.__setattr__(self, "pieces", (algorithm, size, tuple(hashes)))

    # -- codec: the form the store has always written (json.dumps(asdict(spec))) ----------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Spec:
        try:
            out = dict(data)
            out["headers"] = _pairs(out.get("headers", ()))
            out["form_fields"] = _pairs(out.get("form_fields", ()))
            out["urls"] = tuple(out.get("urls", ()))
            if out.get("refresh") is not None:
                out["refresh"] = tuple(out["refresh"])
            return cls(**out)
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidRequest(f"not a task spec: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> Spec:
        return cls.from_dict(_object(text, "task spec"))


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
    # Expired links (issue 17): the URL and headers a refresh hook gave last (they replace
    # the spec's for every later request, across restarts), how many refreshes so far, and
    # when the hook said the new URL expires (epoch seconds), if it did.
    refreshed_url: str | None = None
    refreshed_headers: tuple[tuple[str, str], ...] = ()
    refreshes: int = 0
    refresh_expires: float | None = None

    # -- codec -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field by name, in JSON types: the phase by value, the error as
        :meth:`TransferError.to_dict`, the body in base64, tuples as lists."""
        body = self.response_body
        return {
            "phase": self.phase.value,
            "detail": self.detail,
            "offset": self.offset,
            "total": self.total,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "restarts": self.restarts,
            "attempts": self.attempts,
            "failures": self.failures,
            "status_code": self.status_code,
            "error": None if self.error is None else self.error.to_dict(),
            "active_seconds": self.active_seconds,
            "response_status": self.response_status,
            "response_headers": [list(h) for h in self.response_headers],
            "response_reason": self.response_reason,
            "response_body": None if body is None else base64.b64encode(body).decode(),
            "upload_url": self.upload_url,
            "segments": [list(seg) for seg in self.segments],
            "boot_id": self.boot_id,
            "unsafe_sent": self.unsafe_sent,
            "partial_id": list(self.partial_id),
            "refreshed_url": self.refreshed_url,
            "refreshed_headers": [list(h) for h in self.refreshed_headers],
            "refreshes": self.refreshes,
            "refresh_expires": self.refresh_expires,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidRequest(f"not a task snapshot: unknown keys {sorted(unknown)}")
        d = cls()
        try:
            body, error = data.get("response_body"), data.get("error")
            return cls(
                phase=Phase(data.get("phase", d.phase.value)),
                detail=str(data.get("detail", d.detail)),
                offset=int(data.get("offset", d.offset)),
                total=_opt_int(data.get("total")),
                etag=_opt_str(data.get("etag")),
                last_modified=_opt_str(data.get("last_modified")),
                restarts=int(data.get("restarts", d.restarts)),
                attempts=int(data.get("attempts", d.attempts)),
                failures=int(data.get("failures", d.failures)),
                status_code=_opt_int(data.get("status_code")),
                error=None if error is None else error_from_dict(dict(error)),
                active_seconds=float(data.get("active_seconds", d.active_seconds)),
                response_status=_opt_int(data.get("response_status")),
                response_headers=_pairs(data.get("response_headers", ())),
                response_reason=_opt_str(data.get("response_reason")),
                response_body=None if body is None else base64.b64decode(body, validate=True),
                upload_url=_opt_str(data.get("upload_url")),
                segments=tuple((int(a), int(b), int(c)) for a, b, c in data.get("segments", ())),
                boot_id=_opt_str(data.get("boot_id")),
                unsafe_sent=bool(data.get("unsafe_sent", False)),
                partial_id=tuple(int(n) for n in data.get("partial_id", ())),
                refreshed_url=_opt_str(data.get("refreshed_url")),
                refreshed_headers=_pairs(data.get("refreshed_headers", ())),
                refreshes=int(data.get("refreshes", d.refreshes)),
                refresh_expires=_opt_float(data.get("refresh_expires")),
            )
        except (TypeError, ValueError, binascii.Error) as exc:
            raise InvalidRequest(f"not a task snapshot: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> Snapshot:
        return cls.from_dict(_object(text, "task snapshot"))


def _object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidRequest(f"not a {what}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"not a {what}: a JSON object is needed, not {type(data).__name__}")
    return data


def _pairs(items: Any) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        k, v = item
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"a header or field is a pair of strings, not {item!r}")
        out.append((k, v))
    return tuple(out)


def _opt_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"an integer is needed, not {value!r}")
    return value


def _opt_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"a string is needed, not {value!r}")
    return value


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"a number is needed, not {value!r}")
    return float(value)
