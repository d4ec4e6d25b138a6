"""The headers of a download request: pure functions of the task and the URL asked.

Credentials go only to the origin the caller named (a redirect elsewhere drops them), the
body is asked for as is (no content coding, so offsets are byte offsets of the file), and a
resume asks for the missing bytes under If-Range, so a changed resource answers 200 whole.
"""

from __future__ import annotations

from bgtransfer._protocol._ranges import (
    choose_validator,
    last_modified_is_settled,
    range_header,
)
from bgtransfer._protocol._redirects import SENSITIVE_HEADERS, origin
from bgtransfer._protocol._segments import first_unfinished, segment_range
from bgtransfer._protocol._task import Snapshot, Spec

__all__ = ["if_range", "request_headers", "resume_at", "segment_headers", "segment_if_range"]

Headers = tuple[tuple[str, str], ...]


def resume_at(snap: Snapshot) -> int:
    """The first byte the next request asks for: the offset, or with segments the position
    of the first unfinished one (the whole length when all are complete)."""
    if not snap.segments:
        return snap.offset
    i = first_unfinished(snap.segments)
    if i is None:
        return snap.segments[-1][2] if snap.total is None else snap.total
    return snap.segments[i][1]


def _date(snap: Snapshot) -> str | None:
    return next((v for k, v in snap.response_headers if k.lower() == "date"), None)


def if_range(snap: Snapshot) -> str | None:
    """If-Range for a resume; the Date of the response that began the file decides whether
    its Last-Modified is strong enough (RFC 9110 §13.1.5)."""
    return choose_validator(snap.etag, snap.last_modified, _date(snap))


def segment_if_range(snap: Snapshot) -> str | None:
    """If-Range for a segment's request: as :func:`if_range`, but a date only once it is a
    minute old. Apache httpd answers a younger If-Range date with 200, which a segment must
    take for a new version: the file would restart again and again, never changed. Without
    If-Range the 206's own validators are checked (``check_segment_response``)."""
    validator = if_range(snap)
    if validator is None or validator.startswith('"'):
        return validator
    return validator if last_modified_is_settled(snap.last_modified, _date(snap)) else None


def request_headers(spec: Spec, snap: Snapshot, url: str) -> Headers:
    same_origin = origin(url) == origin(spec.url)
    out = [(k, v) for k, v in spec.headers if same_origin or k.lower() not in SENSITIVE_HEADERS]
    out.append(("Accept-Encoding", "identity"))
    if snap.offset > 0:
        i = first_unfinished(snap.segments)
        if i is not None:
            out.append(("Range", segment_range(snap.segments[i])))
        else:
            out.append(("Range", range_header(resume_at(snap))))
        validator = if_range(snap)
        if validator is not None:
            out.append(("If-Range", validator))
    return tuple(out)


def segment_headers(spec: Spec, snap: Snapshot, url: str, index: int) -> Headers:
    """The headers that ask for what segment ``index`` still needs (If-Range set)."""
    base = request_headers(spec, snap, url)
    out = [(k, v) for k, v in base if k not in ("Range", "If-Range")]
    out.append(("Range", segment_range(snap.segments[index])))
    validator = segment_if_range(snap)
    if validator is not None:
        out.append(("If-Range", validator))
    return tuple(out)
