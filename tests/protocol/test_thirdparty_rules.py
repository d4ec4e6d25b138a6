"""Rules that servers nobody here wrote taught us (tests/interop runs the servers themselves).

* Apache httpd answers 416 with no Content-Range (RFC 9110 §15.5.17 only says SHOULD): on a
  resume it means the resource now ends at or before our offset, so the download starts
  again; it used to fail the task as a final 416.
* Apache httpd honours an If-Range date only when the Last-Modified is at least 60 s older
  than its Date (``ap_condition_if_range``); younger, it answers 200 though nothing changed.
  A segment takes a 200 for a new version, so a segmented download of such a file restarted
  until it failed ("resource keeps changing"). A segment's request now carries a date only
  once it is a minute old; a younger one is checked on the 206 (its own Last-Modified).
"""

from __future__ import annotations

import pytest

from bgtransfer._protocol._classify import Decision, classify_response
from bgtransfer._protocol._machine import (
    BodyEnded,
    DataWritten,
    Response,
    RetryDue,
    SegmentsPlanned,
    SendRequest,
    Spec,
    Start,
    TransferMachine,
)
from bgtransfer._protocol._ranges import SETTLED_SECONDS, last_modified_is_settled
from bgtransfer._protocol._segments import SegmentAnswer, check_segment_response, plan_segments

MiB = 1 << 20
N = 1000
LM = "Sun, 06 Nov 1994 08:49:37 GMT"


def resumed(first: dict[str, str], written: int = 400) -> tuple[TransferMachine, SendRequest]:
    """A download whose first answer had ``first``'s headers, cut after ``written`` bytes,
    and the request that resumes it."""
    m = TransferMachine(Spec("http://h/f"))
    m.handle(Start(), now=0.0)
    m.handle(Response(200, first), now=0.0)
    m.handle(DataWritten(written), now=0.0)
    m.handle(BodyEnded(), now=0.0)  # short of the Content-Length: a retry
    m.handle(RetryDue(), now=1.0)
    actions = m.handle(Start(), now=1.0)
    sends = [a for a in actions if isinstance(a, SendRequest)]
    assert len(sends) == 1, actions
    return m, sends[0]


def date_after(seconds: int) -> str:
    import email.utils

    base = email.utils.parsedate_to_datetime(LM).timestamp()
    return email.utils.formatdate(base + seconds, usegmt=True)


# -- 416 without Content-Range ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "offset", "total", "expected"),
    [
        pytest.param({}, 400, N, Decision.RESTART, id="resume: past the new end"),
        pytest.param({}, N, N, Decision.RESTART, id="resume: every byte held, unproven"),
        pytest.param({}, 400, None, Decision.RESTART, id="resume: length unknown"),
        pytest.param({}, 0, None, Decision.FAIL, id="fresh: a 416 for no range is final"),
        pytest.param({"content-range": "oops"}, 400, N, Decision.FAIL, id="a garbled one lies"),
        pytest.param({"content-range": f"bytes */{N}"}, N, N, Decision.DONE, id="nginx's"),
    ],
)
def test_a_416_without_content_range(
    headers: dict[str, str], offset: int, total: int | None, expected: Decision
) -> None:
    assert classify_response(416, headers, offset, total) is expected


def test_the_machine_restarts_on_apaches_416() -> None:
    m, request = resumed({"content-length": str(N), "etag": '"a"'})
    assert dict(request.headers)["Range"] == "bytes=400-"
    actions = m.handle(Response(416, {}), now=1.0)
    assert m.snap.error is None
    assert m.snap.offset == 0
    assert "restarting from 0" in m.snap.detail
    again = [a for a in actions if isinstance(a, SendRequest)]
    assert len(again) == 1
    assert "Range" not in dict(again[0].headers)


# -- If-Range dates on segments --------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "settled"),
    [(0, False), (1, False), (59, False), (int(SETTLED_SECONDS), True), (86400, True)],
)
def test_a_last_modified_is_settled_after_a_minute(seconds: int, settled: bool) -> None:
    assert last_modified_is_settled(LM, date_after(seconds)) is settled


def test_a_last_modified_without_a_date_is_not_settled() -> None:
    assert not last_modified_is_settled(LM, None)
    assert not last_modified_is_settled(None, date_after(3600))
    assert not last_modified_is_settled("yesterday", date_after(3600))


def segmented(seconds: int, etag: str | None = None) -> TransferMachine:
    total = 8 * MiB
    headers = {"accept-ranges": "bytes", "last-modified": LM, "date": date_after(seconds)}
    headers["content-length"] = str(total)
    if etag is not None:
        headers["etag"] = etag
    m = TransferMachine(Spec("http://h/f", segments=4))
    m.handle(Start(), now=0.0)
    m.handle(Response(200, headers), now=0.0)
    segs, why = plan_segments(4, 200, headers, total)
    assert len(segs) == 4, why  # RFC 9110's one second is enough to plan segments
    m.handle(SegmentsPlanned(segs), now=0.0)
    return m


@pytest.mark.parametrize("seconds", [1, 30, 59])
def test_a_segment_of_a_young_last_modified_sends_no_if_range(seconds: int) -> None:
    m = segmented(seconds)
    _, request = m.segment_request(1)
    assert "if-range" not in {k.lower() for k, _ in request}
    assert dict(request)["Range"] == f"bytes={2 * MiB}-{4 * MiB - 1}"
    # Its 206 is checked by its own Last-Modified instead: another date is another version.
    seg = m.snap.segments[1]
    same = {"content-range": f"bytes {2 * MiB}-{4 * MiB - 1}/{8 * MiB}", "last-modified": LM}
    kw = {"etag": m.snap.etag, "last_modified": m.snap.last_modified}
    assert check_segment_response(206, same, seg, 8 * MiB, **kw) is SegmentAnswer.USE
    moved = {**same, "last-modified": date_after(seconds + 5)}
    assert check_segment_response(206, moved, seg, 8 * MiB, **kw) is SegmentAnswer.CHANGED


def test_a_segment_of_a_settled_last_modified_sends_it_in_if_range() -> None:
    _, request = segmented(60).segment_request(1)
    assert dict(request)["If-Range"] == LM


def test_a_strong_etag_goes_in_every_segments_if_range_whatever_the_date() -> None:
    _, request = segmented(1, etag='"v1"').segment_request(2)
    assert dict(request)["If-Range"] == '"v1"'


def test_a_single_stream_resume_keeps_rfc_9110s_one_second() -> None:
    # One connection takes a 200 as a restart, not as a failure: the RFC's rule stays.
    headers = {"content-length": str(N), "last-modified": LM, "date": date_after(1)}
    _, request = resumed(headers)
    assert dict(request.headers)["If-Range"] == LM
