"""Range, Content-Range, If-Range and Retry-After rules (RFC 9110 §14, §13.1.5, §10.2.3)."""

from __future__ import annotations

import datetime
import email.utils
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ContentRange",
    "choose_validator",
    "last_modified_is_settled",
    "last_modified_is_strong",
    "parse_content_range",
    "parse_retry_after",
    "range_header",
    "validator_changed",
]

# ASCII digits only (\d also matches other scripts' digits), at most 20 of them: a server
# controls these headers, and longer numbers exceed int()'s string limit or any real size.
_CONTENT_RANGE = re.compile(
    r"bytes[ \t]+(?:([0-9]{1,20})-([0-9]{1,20})|\*)/([0-9]{1,20}|\*)\Z", re.IGNORECASE
)
_DELTA_SECONDS = re.compile(r"[0-9]+\Z")
# Longer than any wait worth honouring (about 31 years); treated as "wait forever".
_MAX_DELTA_DIGITS = 9
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


@dataclass(frozen=True, slots=True)
class ContentRange:
    """A parsed ``Content-Range``: ``first``/``last`` are None for ``bytes */N``."""

    first: int | None
    last: int | None
    total: int | None


def parse_content_range(value: str | None) -> ContentRange | None:
    """Parse a Content-Range value; None when absent or malformed.

    Malformed covers last < first and last >= total: a server that says that is lying and
    its bytes must not be placed anywhere.
    """
    if value is None:
        return None
    m = _CONTENT_RANGE.match(value.strip())
    if m is None:
        return None
    first_s, last_s, total_s = m.groups()
    total = None if total_s == "*" else int(total_s)
    if first_s is None:
        if total is None:
            return None
        return ContentRange(None, None, total)
    first, last = int(first_s), int(last_s)
    if last < first or (total is not None and last >= total):
        return None
    return ContentRange(first, last, total)


def range_header(offset: int) -> str:
    return f"bytes={offset}-"


def _strong_etag(etag: str | None) -> str | None:
    if etag is None:
        return None
    tag = etag.strip()
    if tag.startswith('"') and tag.endswith('"') and len(tag) >= 2:
        return tag
    return None


def _is_weak_etag(etag: str | None) -> bool:
    return etag is not None and etag.strip()[:2].upper() == "W/"


def _http_date(value: str | None) -> float | None:
    if value is None:
        return None
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


def last_modified_is_strong(last_modified: str | None, date: str | None) -> bool:
    """RFC 9110 §8.8.2.2: a client may treat Last-Modified as strong only when the response
    that carried it has a Date at least one second later (so a second change within the
    same second cannot share the date)."""
    modified, sent = _http_date(last_modified), _http_date(date)
    return modified is not None and sent is not None and sent - modified >= 1.0


# Apache httpd takes an If-Range date only when its Last-Modified is at least 60 s older
# than its Date (ap_condition_if_range); a younger one gets 200, whatever the file.
SETTLED_SECONDS = 60.0


def last_modified_is_settled(last_modified: str | None, date: str | None) -> bool:
    """Whether a Last-Modified is old enough, by the Date that carried it, for every server
    to honour it in If-Range (stricter than RFC 9110's one second: see SETTLED_SECONDS)."""
    modified, sent = _http_date(last_modified), _http_date(date)
    return modified is not None and sent is not None and sent - modified >= SETTLED_SECONDS


def choose_validator(etag: str | None, last_modified: str | None, date: str | None) -> str | None:
    """The value to send in If-Range: a strong ETag, else a strong Last-Modified, else None.

    RFC 9110 §13.1.5: never a weak ETag (a compliant server would answer 200 every time),
    and an HTTP-date only when the resource has no entity tag at all and the date is strong
    (``date``, the Date of the response that carried it, is at least 1 s later). A weak
    ETag therefore means no If-Range: the resume is checked by :func:`validator_changed`.
    """
    tag = _strong_etag(etag)
    if tag is not None:
        return tag
    if _is_weak_etag(etag):
        return None
    if last_modified is not None and last_modified_is_strong(last_modified, date):
        return last_modified.strip()
    return None


def validator_changed(
    etag: str | None, last_modified: str | None, headers: Mapping[str, str]
) -> str | None:
    """Why a 206 (or a 200 with Content-Range) answering a resume is another version of the
    resource, or None when nothing it says contradicts the recorded validators.

    A server may ignore If-Range (S3 answers 206 whatever it says), so the answer's own
    ETag, else its Last-Modified, must match what the file was begun with. A validator the
    answer leaves out is no evidence either way; a differing one always is.
    """
    new_tag = headers.get("etag")
    if etag is not None and new_tag is not None:
        if etag.strip() != new_tag.strip():
            return f"the ETag changed from {etag.strip()} to {new_tag.strip()}"
        if _strong_etag(etag) is not None:
            return None  # the same strong tag: byte-identical by definition
    new_lm = headers.get("last-modified")
    if last_modified is not None and new_lm is not None:
        old_t, new_t = _http_date(last_modified), _http_date(new_lm)
        same = old_t == new_t if old_t is not None and new_t is not None else None
        if not (same if same is not None else last_modified.strip() == new_lm.strip()):
            return (
                f"the Last-Modified date changed from {last_modified.strip()} to {new_lm.strip()}"
            )
    return None


def parse_retry_after(value: str | None, wall_now: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date).

    Returns None for a missing or unparsable value (the caller then uses its own backoff) and
    0.0 for a date in the past. ``wall_now`` is the caller's wall clock (seconds since the
    epoch): the date form is absolute, the one place a wall clock is the right clock.
    """
    if value is None:
        return None
    v = value.strip()
    if _DELTA_SECONDS.match(v):
        return float(int(v)) if len(v) <= _MAX_DELTA_DIGITS else math.inf
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # RFC 9110 §5.6.7: the obsolete asctime form carries no zone and means GMT. A
        # numeric "-0000" says "zone unknown" and is none of HTTP's three date forms.
        if "-0000" in v:
            return None
        when = when.replace(tzinfo=datetime.UTC)
    # Aware arithmetic only: datetime.timestamp() reads the machine's zone for a naive value.
    delta = (when - _EPOCH).total_seconds() - wall_now
    if not math.isfinite(delta):
        return None
    return max(0.0, delta)
