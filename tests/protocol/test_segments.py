"""The segment rules and the machine's segment events, with no I/O."""

from __future__ import annotations

import itertools

import pytest

from bgtransfer._exceptions import InvalidTransition
from bgtransfer._models import Phase
from bgtransfer._protocol._machine import (
    CHECKPOINT_BYTES,
    BodyEnded,
    DiscardResponse,
    Finalize,
    Persist,
    Response,
    RestartRequired,
    SegmentsPlanned,
    SegmentSplit,
    SegmentWritten,
    SendRequest,
    Spec,
    Start,
    TransferMachine,
    WriteBody,
)
from bgtransfer._protocol._segments import (
    MIN_SEGMENT,
    SegmentAnswer,
    check_segment_response,
    first_unfinished,
    plan_segments,
    segment_range,
    split_largest,
)

MiB = 1 << 20
OK_HEADERS = {"accept-ranges": "bytes", "etag": '"v1"', "content-length": str(16 * MiB)}


def test_plan_tiles_the_file_exactly() -> None:
    segs, why = plan_segments(4, 200, OK_HEADERS, 16 * MiB + 3)
    assert why == "4 segments"
    assert segs[0][0] == 0
    assert segs[-1][2] == 16 * MiB + 3
    assert all(a[2] == b[0] for a, b in itertools.pairwise(segs))
    assert all(start == pos for start, pos, _ in segs)


@pytest.mark.parametrize(
    ("status", "headers", "total", "reason"),
    [
        (200, {**OK_HEADERS, "accept-ranges": "none"}, 16 * MiB, "does not accept ranges"),
        (200, {"etag": '"v1"'}, 16 * MiB, "does not accept ranges"),
        (200, OK_HEADERS, None, "length is unknown"),
        (200, {"accept-ranges": "bytes", "etag": 'W/"v1"'}, 16 * MiB, "no strong ETag"),
        (200, OK_HEADERS, MiB, "smaller than"),
        (203, OK_HEADERS, 16 * MiB, "answered 203"),
        (206, {"etag": '"v1"', "content-range": "bytes 5-9/10"}, 10, "not the whole file"),
    ],
)
def test_plan_declines_with_a_reason(
    status: int, headers: dict[str, str], total: int | None, reason: str
) -> None:
    segs, why = plan_segments(4, status, headers, total)
    assert segs == ()
    assert reason in why


def test_plan_accepts_last_modified_and_a_206_without_accept_ranges() -> None:
    lm = {"last-modified": "Wed, 21 Oct 2015 07:28:00 GMT", "date": "Wed, 21 Oct 2015 07:28:01 GMT"}
    assert len(plan_segments(2, 200, {"accept-ranges": "bytes", **lm}, 4 * MiB)[0]) == 2
    # A Last-Modified in the second the response was sent is weak (RFC 9110 8.8.2.2): no
    # If-Range could keep the segments to one version.
    weak = {**lm, "date": lm["last-modified"]}
    segs, why = plan_segments(2, 200, {"accept-ranges": "bytes", **weak}, 4 * MiB)
    assert segs == ()
    assert "no strong ETag" in why
    cr = {"content-range": f"bytes 0-{4 * MiB - 1}/{4 * MiB}", "etag": '"x"'}
    assert len(plan_segments(3, 206, cr, 4 * MiB)[0]) == 3
    assert len(plan_segments(16, 200, OK_HEADERS, 3 * MiB)[0]) == 3  # at least 1 MiB each


def test_segment_answers() -> None:
    seg = (100, 150, 200)
    assert segment_range(seg) == "bytes=150-199"
    good = {"content-range": "bytes 150-199/1000"}
    assert check_segment_response(206, good, seg, 1000) is SegmentAnswer.USE
    assert check_segment_response(200, {}, seg, 1000) is SegmentAnswer.RESTART
    lying = {"content-range": "bytes 151-199/1000"}
    assert check_segment_response(206, lying, seg, 1000) is SegmentAnswer.RESTART
    other_total = {"content-range": "bytes 150-199/1001"}
    assert check_segment_response(206, other_total, seg, 1000) is SegmentAnswer.RESTART
    assert check_segment_response(206, {}, seg, 1000) is SegmentAnswer.RESTART
    assert check_segment_response(503, {}, seg, 1000) is SegmentAnswer.RETRY
    assert check_segment_response(404, {}, seg, 1000) is SegmentAnswer.FAIL
    assert check_segment_response(302, {}, seg, 1000) is SegmentAnswer.RESTART


def test_segment_answer_of_another_version_is_a_change() -> None:
    # S3 answers 206 whatever If-Range says: the 206's own ETag tells the versions apart.
    seg = (100, 150, 200)
    cr = {"content-range": "bytes 150-199/1000"}
    same = {**cr, "etag": '"v1"'}
    other = {**cr, "etag": '"v2"'}
    assert check_segment_response(206, same, seg, 1000, etag='"v1"') is SegmentAnswer.USE
    assert check_segment_response(206, other, seg, 1000, etag='"v1"') is SegmentAnswer.CHANGED
    lm_old, lm_new = "Wed, 21 Oct 2015 07:28:00 GMT", "Thu, 22 Oct 2015 07:28:00 GMT"
    dated = {**cr, "last-modified": lm_new}
    assert (
        check_segment_response(206, dated, seg, 1000, last_modified=lm_old) is SegmentAnswer.CHANGED
    )
    assert check_segment_response(206, cr, seg, 1000, etag='"v1"') is SegmentAnswer.USE


def test_split_largest_busy_segment() -> None:
    segs = ((0, 10, 5 * MiB), (5 * MiB, 5 * MiB + 10, 6 * MiB))
    out = split_largest(segs, {0, 1})
    assert out is not None
    new, index = out
    assert index == 2
    mid = 10 + (5 * MiB - 10) // 2
    assert new == ((0, 10, mid), segs[1], (mid, mid, 5 * MiB))
    assert split_largest(segs, {1}) is None  # under 2 MiB left
    assert split_largest(((0, 0, 2 * MIN_SEGMENT - 1),), {0}) is None
    assert first_unfinished(((0, 5, 5), (5, 6, 9))) == 1
    assert first_unfinished(((0, 5, 5),)) is None


def running(total: int, n: int = 4) -> tuple[TransferMachine, tuple[tuple[int, int, int], ...]]:
    m = TransferMachine(Spec("http://h/f", segments=n))
    m.handle(Start(), now=0.0)
    headers = {**OK_HEADERS, "content-length": str(total)}
    assert m.handle(Response(200, headers), now=0.0) == [Persist(), WriteBody(0, truncate=True)]
    segs, _ = plan_segments(n, 200, headers, total)
    assert m.handle(SegmentsPlanned(segs), now=0.0) == [Persist()]
    return m, segs


def test_segment_progress_checkpoints_and_resumes_with_a_bounded_range() -> None:
    m, _ = running(16 * MiB)
    assert m.snap.detail == "downloading (4 segments)"
    assert m.handle(SegmentWritten(2, 1000), now=0.1) == []
    assert m.handle(SegmentWritten(0, CHECKPOINT_BYTES), now=0.2) == [Persist()]
    assert m.snap.offset == m.committed == CHECKPOINT_BYTES + 1000
    assert m.snap.segments[2] == (8 * MiB, 8 * MiB + 1000, 12 * MiB)
    with pytest.raises(InvalidTransition):
        m.handle(SegmentWritten(1, 4 * MiB + 1), now=0.3)
    with pytest.raises(InvalidTransition):
        m.handle(SegmentWritten(9, 1), now=0.3)
    # A restart of the process: the first unfinished segment is asked for, with If-Range.
    again = TransferMachine.from_snapshot(m.spec, m.snapshot(0.3))
    again.snap.phase = Phase.QUEUED
    (req,) = again.handle(Start(), now=1.0)
    assert isinstance(req, SendRequest)
    headers = dict(req.headers)
    assert headers["Range"] == f"bytes={CHECKPOINT_BYTES}-{4 * MiB - 1}"
    assert headers["If-Range"] == '"v1"'
    cr = {"content-range": f"bytes {CHECKPOINT_BYTES}-{4 * MiB - 1}/{16 * MiB}"}
    assert again.handle(Response(206, cr), now=1.0) == [WriteBody(CHECKPOINT_BYTES, truncate=False)]
    url, seg_headers = again.segment_request(2)
    assert url == "http://h/f"
    assert dict(seg_headers)["Range"] == f"bytes={8 * MiB + 1000}-{12 * MiB - 1}"


def test_all_segments_done_ends_the_body() -> None:
    m, segs = running(4 * MiB, n=2)
    for i, (start, _, end) in enumerate(segs):
        m.handle(SegmentWritten(i, end - start), now=0.1)
    assert m.handle(BodyEnded(), now=0.2) == [Finalize(4 * MiB, None)]


def test_restart_required_clears_segments_and_asks_again_from_zero() -> None:
    m, segs = running(8 * MiB)
    m.handle(SegmentWritten(1, 5000), now=0.1)
    actions = m.handle(RestartRequired("segment 1: the resource changed"), now=0.2)
    assert isinstance(actions[0], Persist)
    assert isinstance(actions[1], SendRequest)
    assert "Range" not in dict(actions[1].headers)
    assert m.snap.segments == ()
    assert (m.snap.offset, m.committed, m.snap.restarts) == (0, 0, 1)
    assert not m.segments_distrusted
    m.handle(Response(200, OK_HEADERS), now=0.3)
    m.handle(SegmentsPlanned(segs), now=0.3)
    m.handle(RestartRequired("lying", distrust=True), now=0.4)
    assert m.segments_distrusted


def test_split_keeps_the_progress() -> None:
    m, _ = running(16 * MiB)
    m.handle(SegmentWritten(0, 10), now=0.1)
    out = split_largest(m.snap.segments, {0})
    assert out is not None
    assert m.handle(SegmentSplit(out[0]), now=0.1) == []
    assert len(m.snap.segments) == 5
    assert m.snap.offset == 10


def test_fresh_answer_on_resume_drops_the_segments() -> None:
    m, _ = running(8 * MiB)
    m.handle(SegmentWritten(0, CHECKPOINT_BYTES), now=0.1)
    again = TransferMachine.from_snapshot(m.spec, m.snapshot(0.2))
    again.snap.phase = Phase.QUEUED
    again.handle(Start(), now=1.0)
    actions = again.handle(Response(200, {**OK_HEADERS, "etag": '"v2"'}), now=1.0)
    assert actions == [Persist(), WriteBody(0, truncate=True)]
    assert again.snap.segments == ()
    assert again.snap.restarts == 1
    assert DiscardResponse() not in actions
