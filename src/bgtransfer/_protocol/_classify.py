"""What a response means for a download, given the bytes we already have.

A pure function of the status, the headers and our offset (RFC 9110 §14, curl, aria2): the
machine acts on its answer, and ``test_classify`` checks it against those sources.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

from bgtransfer._exceptions import (
    FileTooLarge,
    IntegrityError,
)
from bgtransfer._protocol._ranges import parse_content_range
from bgtransfer._protocol._redirects import REDIRECT_STATUS
from bgtransfer._protocol._retry import RETRYABLE_STATUS

__all__ = [
    "Decision",
    "classify_response",
    "content_length",
    "short_body",
    "too_big",
]


class Decision(Enum):
    """What a response to a download request means for the bytes on disk."""

    REDIRECT = "redirect"
    APPEND = "append"
    FRESH = "fresh"
    RESTART = "restart"
    DONE = "done"
    RETRY = "retry"
    FAIL = "fail"


def classify_response(
    status: int, headers: Mapping[str, str], offset: int, total: int | None
) -> Decision:
    """Decide what to do with a response to a request for bytes ``offset-``.

    Bytes are appended only when the server proves they start exactly at ``offset`` of the
    same representation we started (RFC 9110 §14.4, curl test 1156, aria2 isRangeSatisfied).
    """
    if status in REDIRECT_STATUS:
        return Decision.REDIRECT
    if status in RETRYABLE_STATUS:
        return Decision.RETRY
    cr = parse_content_range(headers.get("content-range"))
    if status == 416:
        if offset > 0 and cr is not None and cr.first is None:
            if cr.total == offset and (total is None or total == offset):
                return Decision.DONE
            return Decision.RESTART
        if offset > 0 and "content-range" not in headers:
            # Apache httpd answers 416 with no Content-Range (RFC 9110 §15.5.17: SHOULD):
            # the resource ends at or before our offset now; nothing vouches for our bytes.
            return Decision.RESTART
        return Decision.FAIL
    if status == 206 or (status == 200 and cr is not None and offset > 0):
        if cr is None or cr.first is None:
            return Decision.RESTART
        same_total = total is None or cr.total is None or cr.total == total
        if cr.first == offset and same_total:
            # From byte 0 it is a whole new download: validators and total must be recorded.
            return Decision.FRESH if offset == 0 else Decision.APPEND
        if cr.first == 0 and cr.total is not None and cr.last == cr.total - 1:
            return Decision.FRESH
        return Decision.RESTART
    if 200 <= status < 300:
        return Decision.FRESH
    return Decision.FAIL


def content_length(headers: Mapping[str, str]) -> int | None:
    value = (headers.get("content-length") or "").strip()
    # ASCII digits only: str.isdigit() accepts "²", which int() rejects.
    if not value or len(value) > 19 or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def too_big(limit: int | None, size: int | None, *, grew: bool = False) -> FileTooLarge | None:
    """The error once a download is known to exceed ``max_bytes`` (curl --max-filesize):
    announced (before a byte is written) or grown past it (no length announced)."""
    if limit is None or size is None or size <= limit:
        return None
    return FileTooLarge(
        f"the download grew past max_bytes ({limit} bytes); not retried"
        if grew
        else f"the server announced {size} bytes, more than max_bytes ({limit}); not retried"
    )


def short_body(
    status: int, headers: Mapping[str, str], have: int, promised: int | None
) -> IntegrityError | None:
    """A 416 saying the resource ends exactly where our ``have`` bytes end, though its first
    answer ``promised`` more: the server's Content-Length was larger than its body. That is
    a short body (the server's fault, the same each time), not a changing resource."""
    cr = parse_content_range(headers.get("content-range"))
    if status != 416 or cr is None or cr.total != have or promised is None:
        return None
    if not 0 < have < promised:
        return None
    return IntegrityError(
        f"short body: the server sent {have} bytes, its Content-Length said {promised}, "
        f"and it answers a request for the rest with 416 (it has only {have})"
    )
