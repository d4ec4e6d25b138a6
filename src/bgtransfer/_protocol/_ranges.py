"""Range, Content-Range, If-Range and Retry-After rules (RFC 9110 §14, §13.1.5, §10.2.3)."""

from __future__ import annotations

import datetime
import email.utils
import math
import re
from dataclasses import dataclass

__all__ = [
    "ContentRange",
    "choose_validator",
    "parse_content_range",
    "parse_retry_after",
    "range_header",
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


def choose_validator(etag: str | None, last_modified: str | None) -> str | None:
    """The value to send in If-Range: a strong ETag, else Last-Modified, else None.

    RFC 9110 §13.1.5 forbids a weak ETag in If-Range; sending one would make a compliant
    server answer 200 every time and silently defeat resume.
    """
    if etag is not None:
        tag = etag.strip()
        if tag.startswith('"') and tag.endswith('"') and len(tag) >= 2:
            return tag
    if last_modified is not None and email.utils.parsedate_tz(last_modified) is not None:
        return last_modified.strip()
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
