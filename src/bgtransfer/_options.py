"""What a download or upload request is: its options, their defaults, and the task body.

One place for the defaults (the API's signatures, the CLI and the daemon read them here)
and one codec for the JSON body a client sends to ``POST /v1/tasks``:
:class:`DownloadOptions` / :class:`UploadOptions` validate and normalise every option when
built (InvalidRequest names the first bad one), and :class:`TaskBody` is a whole submit.
Checks that touch the file system (does the target exist, can the source be read) are made
where the row is built (``_tasks``), in the process that will write or read the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._defaults import (
    CHUNK_SIZE,
    DEFAULT_LOW_SPEED_LIMIT,
    DEFAULT_LOW_SPEED_TIME,
    MAX_RETRY_WAIT,
    REQUEST_TIMEOUT,
    RESOURCE_TIMEOUT,
    RETRY_WAIT,
)
from bgtransfer._protocol._digest import check_checksums
from bgtransfer._protocol._pieces import check_pieces
from bgtransfer._protocol._segments import MAX_SEGMENTS
from bgtransfer._protocol._upload import PROTOCOLS
from bgtransfer._protocol._validate import (
    check_headers,
    check_method,
    check_sha256,
    check_timeout,
    check_url,
)
from bgtransfer._scheduling import check_scheduling

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_RETRY_WAIT",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_RESOURCE_TIMEOUT",
    "DEFAULT_RETRY_WAIT",
    "DownloadOptions",
    "TaskBody",
    "UploadOptions",
    "check_argv",
    "check_key",
    "check_metadata",
    "check_umask",
    "check_urls",
    "positive_int",
    "untyped",
]

# The machine's own defaults (one place: _protocol/_defaults), under the names the faces use.
DEFAULT_REQUEST_TIMEOUT = REQUEST_TIMEOUT  # idle: seconds without a new byte
DEFAULT_RESOURCE_TIMEOUT = RESOURCE_TIMEOUT  # the whole transfer, suspended time excluded
DEFAULT_RETRY_WAIT = RETRY_WAIT
DEFAULT_MAX_RETRY_WAIT = MAX_RETRY_WAIT
DEFAULT_CHUNK_SIZE = CHUNK_SIZE
METADATA_LIMIT = 16 * 1024  # bytes of compact JSON: labels and ids, not payloads
KEY_LIMIT = 200

Pairs = tuple[tuple[str, str], ...]


def check_metadata(value: object) -> dict[str, Any] | None:
    """A small JSON object stored with the task, or InvalidRequest saying why not."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"metadata must be a JSON object (a dict), not {type(value).__name__}")
    try:
        text = json.dumps(dict(value), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"metadata must be JSON-serialisable: {exc}") from None
    if len(text.encode()) > METADATA_LIMIT:
        raise InvalidRequest(
            f"metadata is {len(text.encode())} bytes as JSON; the limit is {METADATA_LIMIT} "
            "(store large data elsewhere and put its key in the metadata)"
        )
    out: dict[str, Any] = json.loads(text)  # a copy: the caller's later changes stay out
    return out


def check_key(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= KEY_LIMIT or "\0" in value:
        raise InvalidRequest(
            f"idempotency_key must be a string of 1 to {KEY_LIMIT} characters: {value!r}"
        )
    return value


def positive_int(name: str, value: object, *, allow_none: bool = False, zero: bool = False) -> None:
    if value is None and allow_none:
        return
    if type(value) is not int or value < (0 if zero else 1):
        kind = "non-negative" if zero else "positive"
        raise InvalidRequest(f"{name} must be a {kind} integer, not {value!r}")


def check_argv(value: object, name: str = "on_complete") -> tuple[str, ...] | None:
    """A hook command (completion, refresh): a non-empty argv of strings (no shell), or None."""
    if value is None:
        return None
    if callable(value):
        raise InvalidRequest(
            f"{name} is run by the daemon: it takes an argv (a list of strings), not a "
            f"callable; a callable works in a foreground session (Session(background=False))"
        )
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise InvalidRequest(
            f"{name} must be a non-empty list of strings (an argv, no shell): {value!r}"
        )
    if not all(isinstance(a, str) and "\0" not in a for a in value):
        raise InvalidRequest(f"{name} arguments must be strings without NUL: {value!r}")
    return tuple(value)


MAX_SOURCES = 64  # mirrors of one file


def check_urls(value: object) -> tuple[str, ...]:
    """Mirrors: the sources of one file, each an http(s) URL, none twice."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidRequest(f"urls must be a list of URLs, not {value!r}")
    out = tuple(check_url(u) for u in value)
    if len(out) > MAX_SOURCES:
        raise InvalidRequest(f"urls: at most {MAX_SOURCES} sources, not {len(out)}")
    if len(set(out)) != len(out):
        raise InvalidRequest("urls: the same URL is given twice")
    return out


def check_umask(value: object) -> int:
    if type(value) is not int or not 0 <= value <= 0o777:
        raise InvalidRequest(f"umask must be an integer from 0 to 0o777, not {value!r}")
    return value


def check_ca_bundle(value: object) -> str:
    """A CA bundle option: the absolute path of a readable regular file (its certificates
    are loaded, and a file that holds none refused, when the first request is made)."""
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise InvalidRequest(f"ca_bundle must be the path of a PEM file, not {value!r}")
    path = os.path.abspath(os.fspath(value))
    try:
        with open(path, "rb") as f:
            if not os.path.isfile(path):
                raise InvalidRequest(f"ca_bundle is not a regular file: {path!r}")
            f.read(1)
    except OSError as exc:
        raise InvalidRequest(f"cannot read the CA bundle {path!r}: {exc.strerror}") from None
    return path


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be True or False, not {value!r}")
    return value


def _pairs(value: object) -> object:
    """JSON has no tuples: ``[["Name", "value"], ...]`` back to pairs (anything else is left
    for the check to refuse with its own message)."""
    if isinstance(value, list):
        return [tuple(v) if isinstance(v, list) else v for v in value]
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Common:
    """Options downloads and uploads share; validated and normalised when built."""

    headers: Pairs = ()
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    resource_timeout: float = DEFAULT_RESOURCE_TIMEOUT
    max_attempts: int | None = None
    retry_for: float | None = None
    retry_wait: float = DEFAULT_RETRY_WAIT
    max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT
    on_complete: tuple[str, ...] | None = None
    metadata: dict[str, Any] | None = None
    start_at: float | None = None
    max_rate: int | None = None
    priority: str = "normal"
    ca_bundle: str | None = None

    # Options that are not Spec fields (they live on the task row).
    _ROW_FIELDS: ClassVar[frozenset[str]] = frozenset({"on_complete", "metadata", "overwrite"})

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen instance while it is built

    def _check_common(self) -> None:
        # Scheduling first, then the rest in the order of the signature.
        for name, value in check_scheduling(
            start_at=self.start_at, max_rate=self.max_rate, priority=self.priority
        ).items():
            self._set(name, value)
        self._set("metadata", check_metadata(self.metadata))
        self._set("headers", tuple(check_headers(self.headers)))
        if self.ca_bundle is not None:
            self._set("ca_bundle", check_ca_bundle(self.ca_bundle))

    def _check_lifecycle(self) -> None:
        self._set("request_timeout", check_timeout("request_timeout", self.request_timeout))
        self._set("resource_timeout", check_timeout("resource_timeout", self.resource_timeout))
        positive_int("max_attempts", self.max_attempts, allow_none=True)
        if self.retry_for is not None:
            self._set("retry_for", check_timeout("retry_for", self.retry_for))
        wait = check_timeout("retry_wait", self.retry_wait)
        self._set("retry_wait", wait)
        self._set("max_retry_wait", max(check_timeout("max_retry_wait", self.max_retry_wait), wait))
        self._set("on_complete", check_argv(self.on_complete))

    def to_json(self) -> dict[str, Any]:
        """The options as JSON values (pairs as lists), every one present."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("headers", "form_fields"):
            if name in out:
                out[name] = [list(p) for p in out[name]]
        if out["on_complete"] is not None:
            out["on_complete"] = list(out["on_complete"])
        if "urls" in out:
            out["urls"] = list(out["urls"])
        if out.get("refresh") is not None:
            out["refresh"] = list(out["refresh"])
        out["metadata"] = check_metadata(out["metadata"])  # a copy: the options stay frozen
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Options from their JSON form (absent ones take their defaults); an unknown name is
        an InvalidRequest."""
        unknown = set(data) - cls.names()
        if unknown:
            raise InvalidRequest(f"unknown fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        for name in ("headers", "form_fields"):
            if name in values:
                values[name] = _pairs(values[name])
        return cls(**values)

    @classmethod
    def names(cls) -> frozenset[str]:
        # Asked once per option of every submitted item: computed once per class.
        return _field_names(cls)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each option's default, as the API's signatures show it (headers: None)."""
        out: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(cls)}
        out["headers"] = None
        if "form_fields" in out:
            out["form_fields"] = None
        return out

    def spec_fields(self) -> dict[str, Any]:
        """Keyword arguments for the task's Spec."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in self._ROW_FIELDS
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class DownloadOptions(_Common):
    """Every option of ``download()`` with its default."""

    sha256: str | None = None
    overwrite: bool = False
    low_speed_limit: int = DEFAULT_LOW_SPEED_LIMIT
    low_speed_time: float = DEFAULT_LOW_SPEED_TIME
    segments: int = 1
    max_bytes: int | None = None
    # Every source of the one file (mirrors), the task's URL first; empty: the URL alone.
    urls: tuple[str, ...] = ()
    # The daemon's refresh command for an expired URL (argv, no shell).
    refresh: tuple[str, ...] | None = None
    # Resume this partial file (its record says from where): Session.adopt, bgtransfer adopt.
    adopt: str | None = None
    # Integrity (issue 17): see Spec.checksums / Spec.pieces.
    checksums: tuple[str, ...] = ()
    pieces: tuple[str, int, tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        self._check_common()
        self._check_lifecycle()
        self._set("sha256", check_sha256(self.sha256))
        self._set("checksums", check_checksums(self.checksums, sha256=self.sha256))
        self._set("pieces", check_pieces(self.pieces))
        positive_int("low_speed_limit", self.low_speed_limit, zero=True)
        self._set("low_speed_time", check_timeout("low_speed_time", self.low_speed_time))
        _bool("overwrite", self.overwrite)
        if type(self.segments) is not int or not 1 <= self.segments <= MAX_SEGMENTS:
            raise InvalidRequest(
                f"segments must be an integer from 1 to {MAX_SEGMENTS}, not {self.segments!r}"
            )
        positive_int("max_bytes", self.max_bytes, allow_none=True, zero=True)
        self._set("urls", check_urls(self.urls))
        self._set("refresh", check_argv(self.refresh, "refresh"))
        if self.refresh is not None and len(self.urls) > 1:
            raise InvalidRequest(
                "refresh and several urls together are not supported: a refresh names one URL"
            )
        if self.adopt is not None:
            given: object = self.adopt
            if not isinstance(given, str | os.PathLike) or not os.fspath(given):
                raise InvalidRequest(f"adopt must be the path of a partial file, not {given!r}")
            self._set("adopt", os.path.abspath(os.fspath(given)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class UploadOptions(_Common):
    """Every option of ``upload()`` with its default. ``method`` is the one the protocol
    uses to begin: POST for "tus", and for "multipart" and "ietf" unless another was asked."""

    method: str = "PUT"
    protocol: str = "plain"
    field_name: str = "file"
    form_fields: Pairs = ()
    retry_unsafe: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    response_path: str | None = None
    # The daemon's refresh command for an expired URL or token (argv, no shell).
    refresh: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self._check_common()
        protocol: object = self.protocol  # runtime input: a list would not even hash
        if not isinstance(protocol, str) or protocol not in PROTOCOLS:
            raise InvalidRequest(
                f"protocol must be one of {sorted(PROTOCOLS)}, not {self.protocol!r}"
            )
        verb = check_method(self.method)
        if self.protocol in ("multipart", "ietf") and self.method == "PUT":
            verb = "POST"  # a form is posted, an IETF upload created by POST
        if self.protocol == "tus":
            verb = "POST"  # creation is POST, appends are PATCH (tus 1.0)
        self._set("method", verb)
        self._set("form_fields", tuple(check_headers(self.form_fields)))
        field: object = self.field_name  # runtime input: any type may arrive
        if not isinstance(field, str) or not field:
            raise InvalidRequest(f"field_name must be a non-empty string, not {field!r}")
        _bool("retry_unsafe", self.retry_unsafe)
        positive_int("chunk_size", self.chunk_size)
        self._check_lifecycle()
        if self.response_path is not None:
            where: object = self.response_path
            if not isinstance(where, str | os.PathLike) or not os.fspath(where):
                raise InvalidRequest(f"response_path must be a path, not {where!r}")
            self._set("response_path", os.path.abspath(os.fspath(where)))
        self._set("refresh", check_argv(self.refresh, "refresh"))


@dataclasses.dataclass(frozen=True)
class TaskBody:
    """One submit as the client sends it to ``POST /v1/tasks``: who, what, where, how.

    ``path`` is absolute (the daemon does not know the caller's working directory);
    ``umask`` is the submitting process's, which the finished download's mode follows.
    """

    session: str
    url: str
    path: str
    options: DownloadOptions | UploadOptions
    idempotency_key: str | None = None
    umask: int | None = None

    @property
    def kind(self) -> str:
        return "upload" if isinstance(self.options, UploadOptions) else "download"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "session": self.session,
            "url": self.url,
            "path": self.path,
            "idempotency_key": self.idempotency_key,
            **self.options.to_json(),
        }
        if self.kind == "download":
            out["umask"] = self.umask
        return out

    @classmethod
    def from_json(cls, data: object) -> TaskBody:
        """A body as received: unknown fields, a bad session or a relative path refused."""
        if not isinstance(data, dict):
            raise InvalidRequest("a task must be a JSON object")
        kind = data.get("kind", "download")
        if kind not in ("download", "upload"):
            raise InvalidRequest(f"kind must be 'download' or 'upload', not {kind!r}")
        options_cls: type[DownloadOptions | UploadOptions] = (
            UploadOptions if kind == "upload" else DownloadOptions
        )
        known = {"kind", "session", "url", "path", "idempotency_key", *options_cls.names()}
        if kind == "download":
            known.add("umask")
        unknown = set(data) - known
        if unknown:
            raise InvalidRequest(f"unknown fields: {', '.join(sorted(unknown))}")
        session, url, path = _where(data, kind)
        key = check_key(data.get("idempotency_key"))
        umask = data.get("umask")
        if umask is not None:
            check_umask(umask)
        options = options_cls.from_json({k: data[k] for k in options_cls.names() & set(data)})
        return cls(session, url, path, options, key, umask)


def _where(data: Mapping[str, object], kind: str) -> tuple[str, str, str]:
    """A body's session, url and path, checked as far as the daemon can alone."""
    session = data.get("session")
    if not isinstance(session, str) or not session:
        raise InvalidRequest(f"session must be a non-empty string: {session!r}")
    path = data.get("path")
    if not isinstance(path, str):
        which = "source" if kind == "upload" else "target"
        raise InvalidRequest(f"{which} path must be a string or path, not {path!r}")
    if not os.path.isabs(path):
        # Resolved here it would name a file under the daemon's working directory.
        raise InvalidRequest(
            f"path must be absolute (the daemon does not know the caller's working "
            f"directory): {path!r}"
        )
    url = data.get("url")
    if not isinstance(url, str):
        raise InvalidRequest(f"URL must be a string, not {type(url).__name__}: {url!r}")
    return session, url, path


_NAMES: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> frozenset[str]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    return names


def untyped(**values: Any) -> dict[str, Any]:
    """The caller's option values, untyped: the options classes check them at runtime (a
    face passes its typed parameters through here so mypy does not judge them twice)."""
    return values
