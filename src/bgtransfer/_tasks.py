"""Building task rows from caller input, and their JSON shapes (public and wire)."""

from __future__ import annotations

import base64
import os
import stat
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, fields, replace
from typing import Any

from bgtransfer._engine._files import check_target, current_umask, partial_path
from bgtransfer._engine._sidecar_io import (
    adopt_into,
    adopted_segments,
    default_target,
    read_record,
)
from bgtransfer._exceptions import InvalidRequest, error_from_dict
from bgtransfer._models import PHASE_STATE, Phase
from bgtransfer._options import (
    KEY_LIMIT,
    METADATA_LIMIT,
    DownloadOptions,
    TaskBody,
    UploadOptions,
    check_key,
    check_metadata,
    check_umask,
)
from bgtransfer._protocol._machine import Snapshot, Spec
from bgtransfer._protocol._validate import check_url
from bgtransfer._redact import redact
from bgtransfer._scheduling import queued_detail
from bgtransfer._store._base import TaskRow

__all__ = [
    "DOWNLOAD_OPTIONS",
    "KEY_LIMIT",
    "METADATA_LIMIT",
    "UPLOAD_OPTIONS",
    "adopt_row",
    "adoption",
    "body_of",
    "build_row",
    "build_upload_row",
    "check_key",
    "check_metadata",
    "download_row",
    "options_of",
    "row_from_body",
    "row_from_wire",
    "row_to_wire",
    "task_dict",
    "upload_row",
]

# The keyword options of download() and upload() with their defaults (kept for callers that
# read them as dicts; the one definition is DownloadOptions / UploadOptions).
DOWNLOAD_OPTIONS: dict[str, Any] = DownloadOptions.defaults()
UPLOAD_OPTIONS: dict[str, Any] = UploadOptions.defaults()


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
        "checksums": s.checksums,
        "pieces": s.pieces,
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


def _check_hook(options: DownloadOptions | UploadOptions, background: bool) -> None:
    if options.on_complete is not None and not background:
        raise InvalidRequest("on_complete hooks run in the daemon: use a background session")


def _new_row(
    session: str,
    path: str,
    spec: Spec,
    options: DownloadOptions | UploadOptions,
    *,
    background: bool,
    key: str | None,
    task_id: str | None = None,
    partial: str = "",
    total: int | None = None,
) -> TaskRow:
    now = time.time()
    return TaskRow(
        id=task_id or new_task_id(),
        session=session,
        path=path,
        partial=partial,
        spec=spec,
        overwrite=getattr(options, "overwrite", False),
        snap=Snapshot(phase=Phase.QUEUED, detail=queued_detail(spec.start_at, now), total=total),
        owner=None,
        background=background,
        created_at=now,
        updated_at=now,
        idempotency_key=key,
        on_complete=options.on_complete,
        metadata=options.metadata,
    )


def download_row(
    session: str,
    url: object,
    path: object,
    options: DownloadOptions,
    *,
    background: bool,
    idempotency_key: object = None,
    check_exists: bool = True,
    job_id: str | None = None,
    umask: object = None,
) -> TaskRow:
    """A new download row from validated options; the checks that need this process (the
    target's directory, its umask) are made here.

    ``check_exists=False`` skips only the "target already exists" check: a repeated submit
    with an idempotency key may find its own finished file there. ``umask``: the
    submitting process's (the finished file gets ``0666 & ~umask``); None takes this
    process's.
    """
    url = check_url(url)
    key = check_key(idempotency_key)
    _check_hook(options, background)
    umask = current_umask() if umask is None else check_umask(umask)
    if options.urls and options.urls[0] != url:
        raise InvalidRequest(
            "with urls (mirrors), the task's URL is the first of them: "
            f"{redact(url)} is not {redact(options.urls[0])}"
        )
    target = check_target(path, overwrite=options.overwrite or not check_exists)
    task_id = new_task_id()
    spec = Spec(url=url, job_id=job_id, umask=umask, **options.spec_fields())
    if spec.adopt is not None:
        return _adopted_row(session, target, spec, options, background=background, key=key)
    return _new_row(
        session,
        target,
        spec,
        options,
        background=background,
        key=key,
        task_id=task_id,
        partial=partial_path(target, task_id),
    )


def _adopted_row(
    session: str,
    target: str,
    spec: Spec,
    options: DownloadOptions,
    *,
    background: bool,
    key: str | None,
) -> TaskRow:
    """A download that resumes an existing partial file from what its record vouches for
    (read here, in the process that will write the file)."""
    assert spec.adopt is not None
    found = read_record(spec.adopt)
    if os.path.dirname(target) != os.path.dirname(found.partial):
        raise InvalidRequest(
            f"the target must be in the partial file's directory, "
            f"{os.path.dirname(found.partial)}: the finished file is renamed into place, "
            f"not copied (target {target!r})"
        )
    spec = replace(spec, adopt=found.partial, segments=adopted_segments(found, spec.segments))
    row = _new_row(
        session, target, spec, options, background=background, key=key, partial=found.partial
    )
    adopt_into(row.snap, found)
    return row


def adoption(
    partial: object,
    path: object = None,
    *,
    url: str | None = None,
    sha256: str | None = None,
    segments: int | None = None,
) -> dict[str, Any]:
    """What a face needs to submit the adoption of ``partial``: ``url`` (the record's,
    unless given), ``path`` (given, else the record's name in the partial's directory) and
    the ``options`` the record implies (its sha256, mirrors and connections, unless given).
    Raises the :class:`CannotAdopt` errors of an unusable record."""
    if not isinstance(partial, str | os.PathLike) or not os.fspath(partial):
        raise InvalidRequest(f"adopt needs the path of a partial file, not {partial!r}")
    found = read_record(os.fspath(partial))
    target = default_target(found) if path is None else path
    if target is None:
        raise InvalidRequest(
            f"the record of {found.partial} names no target file: give one (-o / path=)"
        )
    rec = found.record
    sha = next((c.hex() for c in rec.checksums if c.algorithm == "sha256"), None)
    mirrors = (rec.url, *rec.mirrors) if url is None and rec.mirrors else ()
    return {
        "url": rec.url if url is None else url,
        "path": target,
        "partial": found.partial,
        "offset": rec.offset,
        "clipped": found.clipped,
        "options": {
            "adopt": found.partial,
            "sha256": sha if sha256 is None else sha256,
            "segments": adopted_segments(found, 1) if segments is None else segments,
            "urls": mirrors,
        },
    }


def build_row(
    session: str,
    url: object,
    path: object,
    *,
    background: bool,
    idempotency_key: object = None,
    check_exists: bool = True,
    job_id: str | None = None,
    umask: object = None,
    **options: Any,
) -> TaskRow:
    """Validate everything the caller gave (``options``: :class:`DownloadOptions`'
    fields); InvalidRequest names the first bad value, TypeError an unknown option."""
    check_url(url)
    check_key(idempotency_key)
    return download_row(
        session,
        url,
        path,
        DownloadOptions(**options),
        background=background,
        idempotency_key=idempotency_key,
        check_exists=check_exists,
        job_id=job_id,
        umask=umask,
    )


def upload_row(
    session: str,
    path: object,
    url: object,
    options: UploadOptions,
    *,
    background: bool,
    idempotency_key: object = None,
) -> TaskRow:
    """A new upload row from validated options; the source's size and mtime are recorded
    now."""
    url = check_url(url)
    key = check_key(idempotency_key)
    _check_hook(options, background)
    if not isinstance(path, str | os.PathLike):
        raise InvalidRequest(f"source path must be a string or path, not {path!r}")
    answer = options.response_path
    if answer is not None and not os.path.isdir(os.path.dirname(answer)):
        raise InvalidRequest(f"response_path's directory does not exist: {answer!r}")
    source = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(source)
    except OSError as exc:
        raise InvalidRequest(f"cannot read the source file {source!r}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidRequest(f"the source is not a regular file: {source!r}")
    if not os.access(source, os.R_OK):
        raise InvalidRequest(f"the source file is not readable: {source!r}")
    spec = Spec(
        url=url,
        kind="upload",
        source_size=st.st_size,
        source_mtime_ns=st.st_mtime_ns,
        **options.spec_fields(),
    )
    return _new_row(
        session, source, spec, options, background=background, key=key, total=st.st_size
    )


def build_upload_row(
    session: str,
    path: object,
    url: object,
    *,
    background: bool,
    idempotency_key: object = None,
    **options: Any,
) -> TaskRow:
    """Validate an upload request (``options``: :class:`UploadOptions`' fields)."""
    check_key(idempotency_key)
    check_url(url)
    return upload_row(
        session,
        path,
        url,
        UploadOptions(**options),
        background=background,
        idempotency_key=idempotency_key,
    )


def row_from_body(body: TaskBody, *, background: bool, check_exists: bool = True) -> TaskRow:
    """The new row a decoded submit body asks for."""
    if isinstance(body.options, UploadOptions):
        return upload_row(
            body.session,
            body.path,
            body.url,
            body.options,
            background=background,
            idempotency_key=body.idempotency_key,
        )
    return download_row(
        body.session,
        body.url,
        body.path,
        body.options,
        background=background,
        idempotency_key=body.idempotency_key,
        check_exists=check_exists,
        umask=body.umask,
    )


_SPEC_FIELDS = frozenset(f.name for f in fields(Spec))


def options_of(row: TaskRow) -> DownloadOptions | UploadOptions:
    """The options a row was built from (as normalised then)."""
    cls = UploadOptions if row.spec.kind == "upload" else DownloadOptions
    # A shallow read of the spec's fields: asdict() would deep-copy every header tuple.
    spec = row.spec
    values = {k: getattr(spec, k) for k in cls.names() & _SPEC_FIELDS}
    values.update(on_complete=row.on_complete, metadata=row.metadata)
    if cls is DownloadOptions:
        values["overwrite"] = row.overwrite
    return cls(**values)


def body_of(row: TaskRow) -> TaskBody:
    """The submit body that asks a daemon for ``row``'s task."""
    return TaskBody(
        session=row.session,
        url=row.spec.url,
        path=row.path,
        options=options_of(row),
        idempotency_key=row.idempotency_key,
        umask=row.spec.umask,
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


def adopt_row(
    session: str,
    partial: object,
    path: object,
    *,
    url: str | None,
    headers: object,
    sha256: str | None,
    segments: int | None,
    idempotency_key: str | None,
    background: bool,
    options: Mapping[str, Any],
) -> TaskRow:
    """The row that adopts ``partial`` (:func:`adoption`), the caller's ``options`` (the
    faces' ``**options``: :meth:`download`'s keywords) over what the record implies."""
    found = adoption(partial, path, url=url, sha256=sha256, segments=segments)
    given = {"headers": () if headers is None else headers, **found["options"]}
    try:
        opts = DownloadOptions(**{**given, **options})
    except TypeError as exc:
        raise InvalidRequest(f"adopt: {exc}") from None
    return download_row(
        session,
        found["url"],
        found["path"],
        opts,
        background=background,
        idempotency_key=uuid.uuid4().hex if idempotency_key is None else idempotency_key,
    )
