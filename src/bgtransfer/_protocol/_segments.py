"""Segmented downloads (aria2c -s N): the pure rules, no I/O.

A segment is ``(start, pos, end)``: it covers bytes ``[start, end)`` of the file and
``[start, pos)`` are written (and, once a checkpoint commits them, durable). The segments
of a task tile ``[0, total)`` exactly, so ``sum(pos - start)`` is the task's progress.

Rules
-----
* A download is split only when the first response proves the server can serve ranges of
  one fixed representation: a 200 or 206 from byte 0, a known total length,
  ``Accept-Ranges: bytes`` (or the 206 itself), and a strong validator for ``If-Range``.
  Otherwise it stays on one connection and :func:`plan_segments` says why.
* Every later request asks for ``bytes=pos-(end-1)`` with ``If-Range``. Its bytes are used
  only when the answer is a 206 whose Content-Range starts exactly at ``pos`` of the same
  total (:func:`check_segment_response`) and validators equal to the recorded ones; a 200
  or another ETag / Last-Modified means the resource changed, anything else that lies
  about the range restarts the whole file: versions are never mixed.
* A finished connection may take over half of the largest remaining segment
  (:func:`split_largest`), as aria2 does, so a slow segment does not hold up the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum

from bgtransfer._protocol._ranges import (
    choose_validator,
    parse_content_range,
    validator_changed,
)
from bgtransfer._protocol._redirects import REDIRECT_STATUS
from bgtransfer._protocol._retry import RETRYABLE_STATUS

__all__ = [
    "MAX_SEGMENTS",
    "MIN_SEGMENT",
    "Segment",
    "SegmentAnswer",
    "check_segment_response",
    "contiguous",
    "first_unfinished",
    "plan_segments",
    "segment_range",
    "split_largest",
]

Segment = tuple[int, int, int]  # (start, pos, end): bytes [start, end), [start, pos) written


def contiguous(segments: Iterable[Segment]) -> int:
    """How many bytes from 0 the segments hold without a hole: a segmented download's
    single-stream resume point, and how far its file can be hashed in order."""
    reach = 0
    for start, pos, end in sorted(segments):
        if start > reach:
            break
        reach = max(reach, pos)
        if pos < end:
            break
    return reach


MAX_SEGMENTS = 16
# Below this a segment's request costs more than it saves (aria2's --min-split-size is 20M;
# ours is smaller because a checkpoint already commits every 2 MiB).
MIN_SEGMENT = 1 << 20


def plan_segments(
    n: int, status: int, headers: Mapping[str, str], total: int | None
) -> tuple[tuple[Segment, ...], str]:
    """Split ``[0, total)`` into up to ``n`` segments, or ``()`` and the reason not to."""
    if n <= 1:
        return (), "one segment requested"
    if status not in (200, 206):
        return (), f"the server answered {status}"
    if total is None:
        return (), "the length is unknown"
    ranges = (headers.get("accept-ranges") or "").strip().lower()
    if status != 206 and "bytes" not in ranges.replace(",", " ").split():
        return (), "the server does not accept ranges"
    if status == 206:
        cr = parse_content_range(headers.get("content-range"))
        if cr is None or cr.first != 0 or cr.total != total:
            return (), "the first answer's Content-Range is not the whole file"
    validator = choose_validator(
        headers.get("etag"), headers.get("last-modified"), headers.get("date")
    )
    if validator is None:
        return (), "no strong ETag or Last-Modified to keep the segments of one version"
    count = min(n, MAX_SEGMENTS, total // MIN_SEGMENT)
    if count < 2:
        return (), f"the file is smaller than {2 * MIN_SEGMENT} bytes"
    size, extra = divmod(total, count)
    out: list[Segment] = []
    start = 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        out.append((start, start, end))
        start = end
    return tuple(out), f"{count} segments"


def segment_range(seg: Segment) -> str:
    """The Range value for what a segment still needs."""
    _, pos, end = seg
    return f"bytes={pos}-{end - 1}"


def first_unfinished(segments: tuple[Segment, ...]) -> int | None:
    for i, (_, pos, end) in enumerate(segments):
        if pos < end:
            return i
    return None


class SegmentAnswer(Enum):
    USE = "use"  # a 206 for exactly these bytes: write them
    RETRY = "retry"  # a retryable status: back off and ask again
    RESTART = "restart"  # the server lies about the range: start the file again
    CHANGED = "changed"  # a 206 of another version (If-Range ignored): start the file again
    FAIL = "fail"  # an error status no retry can fix


def check_segment_response(
    status: int,
    headers: Mapping[str, str],
    seg: Segment,
    total: int | None,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
) -> SegmentAnswer:
    """What to do with the answer to ``Range: bytes=pos-(end-1)`` plus ``If-Range``.

    ``etag`` and ``last_modified`` are the validators recorded when the file was begun: a
    206 carrying others is of a new version even though the server ignored If-Range.
    """
    if status in RETRYABLE_STATUS:
        return SegmentAnswer.RETRY
    if status == 200 or status in REDIRECT_STATUS or status == 416:
        # 200: If-Range did not match (a new version); a redirect or 416 for a range of a
        # file whose length we know means the URL no longer serves that file.
        return SegmentAnswer.RESTART
    if status != 206:
        return SegmentAnswer.FAIL
    cr = parse_content_range(headers.get("content-range"))
    if cr is None or cr.first != seg[1] or cr.last is None:
        return SegmentAnswer.RESTART
    if total is not None and cr.total is not None and cr.total != total:
        return SegmentAnswer.RESTART
    if validator_changed(etag, last_modified, headers) is not None:
        return SegmentAnswer.CHANGED
    return SegmentAnswer.USE


def split_largest(
    segments: tuple[Segment, ...], busy: set[int]
) -> tuple[tuple[Segment, ...], int] | None:
    """Give half of the largest busy segment's remainder to a new segment (aria2-style).

    Only a segment with at least ``2 * MIN_SEGMENT`` left is split. Returns the new
    segments and the index of the new one, or None.
    """
    best, left = -1, 0
    for i in busy:
        _, pos, end = segments[i]
        if end - pos > left:
            best, left = i, end - pos
    if best < 0 or left < 2 * MIN_SEGMENT:
        return None
    start, pos, end = segments[best]
    mid = pos + left // 2
    out = list(segments)
    out[best] = (start, pos, mid)
    out.append((mid, mid, end))
    return tuple(out), len(out) - 1
