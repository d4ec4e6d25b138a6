"""Building task rows from caller input, and their JSON shapes (public and wire)."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from bgtransfer._engine._files import check_target, current_umask, partial_path
from bgtransfer._exceptions import InvalidRequest, error_from_dict
from bgtransfer._models import PHASE_STATE, Phase
from bgtransfer._protocol._machine import (
    DEFAULT_LOW_SPEED_LIMIT,
    DEFAULT_LOW_SPEED_TIME,
    Snapshot,
    Spec,
)
from bgtransfer._protocol._segments import MAX_SEGMENTS
from bgtransfer._protocol._validate import (
    check_headers,
    check_sha256,
    check_timeout,
    check_url,
)
from bgtransfer._redact import redact
from bgtransfer._scheduling import check_scheduling, queued_detail
from bgtransfer._store._base import TaskRow

__all__ = [
    "DOWNLOAD_OPTIONS",
    "UPLOAD_OPTIONS",
    "build_row",
    "build_upload_row",
    "row_from_wire",
    "row_to_wire",
    "task_dict",
]


METADATA_LIMIT = 16 * 1024  # bytes of compact JSON: labels and ids, not payloads
KEY_LIMIT = 200


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


def identity(r: TaskRow) -> dict[str, Any]:
    """What a submit asked for, for comparing a repeated idempotency key: what the task
    produces. Headers, timeouts and retry options may differ (a refreshed token, say);
    the first submit's are kept."""
    s = r.spec
    out: dict[str, Any] = {
        "kind": s.kind,
        "url": s.url,
        "path": r.path,
        "sha256": s.sha256,
        "metadata": r.metadata,
    }
    if s.kind == "upload":
        out.update(method=s.method, protocol=s.protocol)
    return out


def same_request(existing: TaskRow, new: TaskRow) -> None:
    """InvalidRequest when an idempotency key is reused for a different request."""
    a, b = identity(existing), identity(new)
    diff = [k for k in a if a[k] != b[k]]
    if diff:
        raise InvalidRequest(
            f"idempotency_key {new.idempotency_key!r} was used for another request "
            f"(task {existing.id}; different {', '.join(diff)})"
        )


def same_target(existing: TaskRow, kind: str, url: object, path: object) -> bool:
    """Whether a keyed submit that no longer validates (its upload source or target directory
    is gone since) still names the task its key found: then that task is the answer."""
    if not isinstance(path, str | os.PathLike):
        return False
    return (
        existing.spec.kind == kind
        and existing.spec.url == url
        and existing.path == os.path.abspath(os.fspath(path))
    )


def new_task_id() -> str:
    return os.urandom(16).hex()


# The keyword options of download(), with their defaults: one list for the API, the control
# protocol and the CLI.
DOWNLOAD_OPTIONS: dict[str, Any] = {
    "headers": None,
    "request_timeout": 60.0,
    "resource_timeout": 7 * 86400.0,
    "sha256": None,
    "overwrite": False,
    "low_speed_limit": DEFAULT_LOW_SPEED_LIMIT,
    "low_speed_time": DEFAULT_LOW_SPEED_TIME,
    "max_attempts": None,
    "retry_for": None,
    "retry_wait": 1.0,
    "max_retry_wait": 120.0,
    "on_complete": None,
    "segments": 1,
    "max_bytes": None,
    "metadata": None,
    "start_at": None,
    "max_rate": None,
    "priority": "normal",
}


def _positive_int(
    name: str, value: object, *, allow_none: bool = False, zero: bool = False
) -> None:
    if value is None and allow_none:
        return
    if type(value) is not int or value < (0 if zero else 1):
        kind = "non-negative" if zero else "positive"
        raise InvalidRequest(f"{name} must be a {kind} integer, not {value!r}")


def _argv(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise InvalidRequest(
            f"on_complete must be a non-empty list of strings (an argv, no shell): {value!r}"
        )
    if not all(isinstance(a, str) and "\0" not in a for a in value):
        raise InvalidRequest(f"on_complete arguments must be strings without NUL: {value!r}")
    return tuple(value)


def _lifecycle(
    *,
    background: bool,
    request_timeout: object,
    resource_timeout: object,
    max_attempts: object,
    retry_for: object,
    retry_wait: object,
    max_retry_wait: object,
    on_complete: object,
) -> tuple[dict[str, Any], tuple[str, ...] | None]:
    """The options downloads and uploads share: Spec keyword arguments, and the hook argv."""
    rt = check_timeout("request_timeout", request_timeout)
    rst = check_timeout("resource_timeout", resource_timeout)
    _positive_int("max_attempts", max_attempts, allow_none=True)
    rfor = None if retry_for is None else check_timeout("retry_for", retry_for)
    rw = check_timeout("retry_wait", retry_wait)
    mrw = check_timeout("max_retry_wait", max_retry_wait)
    hook = _argv(on_complete)
    if hook is not None and not background:
        raise InvalidRequest("on_complete hooks run in the daemon: use a background session")
    spec = {
        "request_timeout": rt,
        "resource_timeout": rst,
        "max_attempts": max_attempts,
        "retry_for": rfor,
        "retry_wait": rw,
        "max_retry_wait": max(mrw, rw),
    }
    return spec, hook


def build_row(
    session: str,
    url: object,
    path: object,
    *,
    background: bool,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    request_timeout: object = 60.0,
    resource_timeout: object = 7 * 86400.0,
    sha256: object = None,
    overwrite: object = False,
    low_speed_limit: object = DEFAULT_LOW_SPEED_LIMIT,
    low_speed_time: object = DEFAULT_LOW_SPEED_TIME,
    max_attempts: object = None,
    retry_for: object = None,
    retry_wait: object = 1.0,
    max_retry_wait: object = 120.0,
    on_complete: object = None,
    segments: object = 1,
    max_bytes: object = None,
    idempotency_key: object = None,
    metadata: object = None,
    check_exists: bool = True,
    start_at: object = None,
    max_rate: object = None,
    priority: object = "normal",
    job_id: str | None = None,
    umask: object = None,
) -> TaskRow:
    """Validate everything the caller gave; InvalidRequest names the first bad value.

    ``check_exists=False`` skips only the "target already exists" check: a repeated submit
    with an idempotency key may find its own finished file there. ``umask``: the
    submitting process's (the finished file gets ``0666 & ~umask``); None takes this
    process's.
    """
    sched = check_scheduling(start_at=start_at, max_rate=max_rate, priority=priority)
    check_url(url)
    key = check_key(idempotency_key)
    meta = check_metadata(metadata)
    assert isinstance(url, str)
    hdrs = check_headers(headers)
    common, hook = _lifecycle(
        background=background,
        request_timeout=request_timeout,
        resource_timeout=resource_timeout,
        max_attempts=max_attempts,
        retry_for=retry_for,
        retry_wait=retry_wait,
        max_retry_wait=max_retry_wait,
        on_complete=on_complete,
    )
    digest = check_sha256(sha256)
    _positive_int("low_speed_limit", low_speed_limit, zero=True)
    lst = check_timeout("low_speed_time", low_speed_time)
    if not isinstance(overwrite, bool):
        raise InvalidRequest(f"overwrite must be True or False, not {overwrite!r}")
    if type(segments) is not int or not 1 <= segments <= MAX_SEGMENTS:
        raise InvalidRequest(
            f"segments must be an integer from 1 to {MAX_SEGMENTS}, not {segments!r}"
        )
    _positive_int("max_bytes", max_bytes, allow_none=True, zero=True)
    assert max_bytes is None or isinstance(max_bytes, int)
    if umask is None:
        umask = current_umask()
    if type(umask) is not int or not 0 <= umask <= 0o777:
        raise InvalidRequest(f"umask must be an integer from 0 to 0o777, not {umask!r}")
    target = check_target(path, overwrite=overwrite or not check_exists)
    task_id = new_task_id()
    assert isinstance(low_speed_limit, int)
    spec = Spec(
        url=url,
        headers=tuple(hdrs),
        sha256=digest,
        low_speed_limit=low_speed_limit,
        low_speed_time=lst,
        segments=segments,
        max_bytes=max_bytes,
        job_id=job_id,
        **sched,
        umask=umask,
        **common,
    )
    now = time.time()
    return TaskRow(
        id=task_id,
        session=session,
        path=target,
        partial=partial_path(target, task_id),
        spec=spec,
        overwrite=overwrite,
        snap=Snapshot(phase=Phase.QUEUED, detail=queued_detail(spec.start_at, now)),
        owner=None,
        background=background,
        created_at=now,
        updated_at=now,
        idempotency_key=key,
        on_complete=hook,
        metadata=meta,
    )


def task_dict(r: TaskRow) -> dict[str, Any]:
    """The stable public JSON shape (CLI ``--json``, the control API)."""
    err = r.snap.error
    return {
        "id": r.id,
        "session": r.session,
        "url": redact(r.spec.url),
        "path": r.path,
        "state": PHASE_STATE[r.snap.phase].value,
        "detail": redact(r.snap.detail),
        "kind": r.spec.kind,
        "bytes_received": r.snap.offset if r.spec.kind == "download" else 0,
        "bytes_sent": r.snap.offset if r.spec.kind == "upload" else 0,
        "bytes_expected": r.snap.total,
        "status_code": r.snap.status_code,
        "error": None if err is None else redact(err.message),
        "error_code": None if err is None else err.code,
        "restarts": r.snap.restarts,
        "attempts": r.snap.attempts,
        "segments": r.spec.segments,
        "max_bytes": r.spec.max_bytes,
        "priority": r.spec.priority,
        "start_at": r.spec.start_at,
        "max_rate": r.spec.max_rate,
        "job": r.spec.job_id,
        "background": r.background,
        "acknowledged": r.acknowledged,
        "created_at": r.created_at,
        "finished_at": r.finished_at,
        "metadata": r.metadata,
        "sha256": r.spec.sha256,
        "idempotency_key": r.idempotency_key,
    }


def row_to_wire(r: TaskRow) -> dict[str, Any]:
    """The public shape plus what a client needs to rebuild the row exactly."""
    s = r.snap
    out = task_dict(r)
    out["internal"] = {
        "partial": r.partial,
        "spec": {
            **asdict(r.spec),
            "headers": [list(h) for h in r.spec.headers],
            "form_fields": [list(h) for h in r.spec.form_fields],
        },
        "overwrite": r.overwrite,
        "phase": s.phase.value,
        "total": s.total,
        "etag": s.etag,
        "last_modified": s.last_modified,
        "failures": s.failures,
        "active_seconds": s.active_seconds,
        "error": None if s.error is None else s.error.to_dict(),
        "owner": r.owner,
        "updated_at": r.updated_at,
        "on_complete": None if r.on_complete is None else list(r.on_complete),
        "hook_state": r.hook_state,
        "idempotency_key": r.idempotency_key,
        "response_status": s.response_status,
        "response_headers": [list(h) for h in s.response_headers],
        "response_reason": s.response_reason,
        "response_body": None
        if s.response_body is None
        else base64.b64encode(s.response_body).decode(),
        "upload_url": s.upload_url,
        "segments": [list(seg) for seg in s.segments],
    }
    return out


def row_from_wire(d: Mapping[str, Any]) -> TaskRow:
    i = d["internal"]
    spec = dict(i["spec"])
    spec["headers"] = tuple((str(k), str(v)) for k, v in spec["headers"])
    spec["form_fields"] = tuple((str(k), str(v)) for k, v in spec.get("form_fields", ()))
    snap = Snapshot(
        phase=Phase(i["phase"]),
        detail=d["detail"],
        offset=d["bytes_received"] if d.get("kind", "download") == "download" else d["bytes_sent"],
        total=i["total"],
        etag=i["etag"],
        last_modified=i["last_modified"],
        restarts=d["restarts"],
        attempts=d["attempts"],
        failures=i["failures"],
        status_code=d["status_code"],
        error=None if i["error"] is None else error_from_dict(i["error"]),
        active_seconds=i["active_seconds"],
        response_status=i["response_status"],
        response_headers=tuple((str(k), str(v)) for k, v in i["response_headers"]),
        response_reason=i.get("response_reason"),
        response_body=None
        if i.get("response_body") is None
        else base64.b64decode(i["response_body"]),
        upload_url=i.get("upload_url"),
        segments=tuple((int(a), int(b), int(c)) for a, b, c in i.get("segments", ())),
    )
    return TaskRow(
        id=d["id"],
        session=d["session"],
        path=d["path"],
        partial=i["partial"],
        spec=Spec(**spec),
        overwrite=i["overwrite"],
        snap=snap,
        owner=i["owner"],
        background=d["background"],
        created_at=d["created_at"],
        updated_at=i["updated_at"],
        finished_at=d["finished_at"],
        idempotency_key=i["idempotency_key"],
        on_complete=None if i["on_complete"] is None else tuple(i["on_complete"]),
        hook_state=i["hook_state"],
        acknowledged=d["acknowledged"],
        metadata=d.get("metadata"),
    )


def absolute(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


UPLOAD_OPTIONS: dict[str, Any] = {
    "method": "PUT",
    "headers": None,
    "protocol": "plain",
    "request_timeout": 60.0,
    "resource_timeout": 7 * 86400.0,
    "field_name": "file",
    "form_fields": None,
    "retry_unsafe": False,
    "chunk_size": 8 << 20,
    "max_attempts": None,
    "retry_for": None,
    "retry_wait": 1.0,
    "max_retry_wait": 120.0,
    "on_complete": None,
    "response_path": None,
    "metadata": None,
    "start_at": None,
    "max_rate": None,
    "priority": "normal",
}


def _response_path(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise InvalidRequest(f"response_path must be a path, not {value!r}")
    target = os.path.abspath(os.fspath(value))
    if not os.path.isdir(os.path.dirname(target)):
        raise InvalidRequest(f"response_path's directory does not exist: {target!r}")
    return target


def build_upload_row(
    session: str,
    path: object,
    url: object,
    *,
    background: bool,
    method: object = "PUT",
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    protocol: object = "plain",
    request_timeout: object = 60.0,
    resource_timeout: object = 7 * 86400.0,
    field_name: object = "file",
    form_fields: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    retry_unsafe: object = False,
    chunk_size: object = 8 << 20,
    max_attempts: object = None,
    retry_for: object = None,
    retry_wait: object = 1.0,
    max_retry_wait: object = 120.0,
    on_complete: object = None,
    idempotency_key: object = None,
    metadata: object = None,
    start_at: object = None,
    max_rate: object = None,
    priority: object = "normal",
    response_path: object = None,
) -> TaskRow:
    """Validate an upload request; the source's size and mtime are recorded now."""
    key = check_key(idempotency_key)
    meta = check_metadata(metadata)
    sched = check_scheduling(start_at=start_at, max_rate=max_rate, priority=priority)
    from bgtransfer._protocol._upload import PROTOCOLS
    from bgtransfer._protocol._validate import check_method

    check_url(url)
    assert isinstance(url, str)
    if protocol not in PROTOCOLS:
        raise InvalidRequest(f"protocol must be one of {sorted(PROTOCOLS)}, not {protocol!r}")
    assert isinstance(protocol, str)
    verb = check_method(method)
    if protocol in ("multipart", "ietf") and method == "PUT":
        verb = "POST"  # a form is posted, an IETF upload created by POST; PUT is plain's default
    if protocol == "tus":
        verb = "POST"  # creation is POST, appends are PATCH (tus 1.0)
    hdrs = check_headers(headers)
    fields = check_headers(form_fields) if form_fields is not None else []
    if not isinstance(field_name, str) or not field_name:
        raise InvalidRequest(f"field_name must be a non-empty string, not {field_name!r}")
    if not isinstance(retry_unsafe, bool):
        raise InvalidRequest(f"retry_unsafe must be True or False, not {retry_unsafe!r}")
    _positive_int("chunk_size", chunk_size)
    assert isinstance(chunk_size, int)
    common, hook = _lifecycle(
        background=background,
        request_timeout=request_timeout,
        resource_timeout=resource_timeout,
        max_attempts=max_attempts,
        retry_for=retry_for,
        retry_wait=retry_wait,
        max_retry_wait=max_retry_wait,
        on_complete=on_complete,
    )
    if not isinstance(path, str | os.PathLike):
        raise InvalidRequest(f"source path must be a string or path, not {path!r}")
    answer = _response_path(response_path)
    source = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(source)
    except OSError as exc:
        raise InvalidRequest(f"cannot read the source file {source!r}: {exc.strerror}") from None
    import stat as stat_mod

    if not stat_mod.S_ISREG(st.st_mode):
        raise InvalidRequest(f"the source is not a regular file: {source!r}")
    if not os.access(source, os.R_OK):
        raise InvalidRequest(f"the source file is not readable: {source!r}")
    spec = Spec(
        url=url,
        headers=tuple(hdrs),
        **common,
        kind="upload",
        method=verb,
        protocol=protocol,
        source_size=st.st_size,
        source_mtime_ns=st.st_mtime_ns,
        field_name=field_name,
        form_fields=tuple(fields),
        retry_unsafe=retry_unsafe,
        chunk_size=chunk_size,
        **sched,
        response_path=answer,
    )
    now = time.time()
    return TaskRow(
        id=new_task_id(),
        session=session,
        path=source,
        partial="",
        spec=spec,
        overwrite=False,
        snap=Snapshot(
            phase=Phase.QUEUED, detail=queued_detail(spec.start_at, now), total=st.st_size
        ),
        owner=None,
        background=background,
        created_at=now,
        updated_at=now,
        idempotency_key=key,
        on_complete=hook,
        metadata=meta,
    )
