"""What segmented downloads must do, as rules over their whole input space (issue 20).

The request side: every segment's request carries its own Range, the If-Range that ties it
to the version the first answer described, and the caller's headers. The answer side: only
a 206 for exactly the asked bytes of the same length is written. The planning side: the
segments tile the file, none is smaller than MIN_SEGMENT, at most MAX_SEGMENTS.
"""

from __future__ import annotations

import itertools

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bgtransfer._protocol._machine import (
    Response,
    SegmentsPlanned,
    SegmentWritten,
    Spec,
    Start,
    TransferMachine,
)
from bgtransfer._protocol._redirects import REDIRECT_STATUS
from bgtransfer._protocol._retry import RETRYABLE_STATUS
from bgtransfer._protocol._segments import (
    MAX_SEGMENTS,
    MIN_SEGMENT,
    Segment,
    SegmentAnswer,
    check_segment_response,
    first_unfinished,
    plan_segments,
    segment_range,
    split_largest,
)

MiB = 1 << 20
ETAG = '"v1"'
URL = "https://files.example/big.iso"
CALLER = (("Authorization", "Bearer t"), ("X-Trace", "abc"), ("Cookie", "s=1"))


def ranged(total: int) -> dict[str, str]:
    return {"accept-ranges": "bytes", "etag": ETAG, "content-length": str(total)}


def planned(total: int = 16 * MiB, n: int = 4, url: str = URL) -> TransferMachine:
    """A machine whose first answer was a 200 that allows ranges, split into n segments."""
    m = TransferMachine(Spec(url, headers=CALLER, segments=n))
    m.handle(Start(), now=0.0)
    m.handle(Response(200, ranged(total)), now=0.0)
    segs, why = plan_segments(n, 200, ranged(total), total)
    assert len(segs) == n, why
    m.handle(SegmentsPlanned(segs), now=0.0)
    return m


def names(headers: tuple[tuple[str, str], ...]) -> list[str]:
    return [k.lower() for k, _ in headers]


# -- what a segment's request carries ------------------------------------------------------


def test_each_segment_request_asks_for_its_own_bytes_of_the_first_version() -> None:
    m = planned()
    for i, (start, _, end) in enumerate(m.snap.segments):
        url, headers = m.segment_request(i)
        assert url == URL
        got = dict(headers)
        assert got["Range"] == f"bytes={start}-{end - 1}"
        # Without If-Range a server that changed the file would send the new version's bytes
        # for this range, and the file would mix two versions.
        assert got["If-Range"] == ETAG
        assert got["Accept-Encoding"] == "identity"
        # The caller's headers go with every connection, not only the first.
        for k, v in CALLER:
            assert got[k] == v
        n = names(headers)
        assert len(n) == len(set(n)), headers


def test_a_segment_request_resumes_at_the_segment_position() -> None:
    m = planned()
    m.handle(SegmentWritten(1, 12345), now=0.1)
    _, headers = m.segment_request(1)
    start, pos, end = m.snap.segments[1]
    assert pos == start + 12345
    assert dict(headers)["Range"] == f"bytes={pos}-{end - 1}"
    assert names(headers).count("range") == 1
    assert names(headers).count("if-range") == 1


def test_segment_requests_after_a_cross_origin_redirect_drop_credentials_only() -> None:
    m = TransferMachine(Spec(URL, headers=CALLER, segments=2))
    m.handle(Start(), now=0.0)
    m.handle(Response(302, {"location": "https://cdn.example/big.iso"}), now=0.0)
    m.handle(Response(200, ranged(4 * MiB)), now=0.0)
    m.handle(SegmentsPlanned(plan_segments(2, 200, ranged(4 * MiB), 4 * MiB)[0]), now=0.0)
    url, headers = m.segment_request(1)
    assert url == "https://cdn.example/big.iso"
    got = dict(headers)
    assert got["X-Trace"] == "abc"
    assert "Authorization" not in got
    assert "Cookie" not in got
    assert got["If-Range"] == ETAG
    assert got["Range"] == f"bytes={2 * MiB}-{4 * MiB - 1}"


def test_a_segment_request_without_a_strong_validator_sends_no_if_range() -> None:
    # Segments are planned only with a validator; a machine rebuilt without one must not
    # invent an If-Range (a weak tag in If-Range makes servers answer 200 every time).
    m = planned()
    m.snap.etag = 'W/"weak"'
    _, headers = m.segment_request(0)
    assert "if-range" not in names(headers)
    assert dict(headers)["Range"].startswith("bytes=0-")


# -- what an answer to a segment request does ----------------------------------------------


@st.composite
def segments_of(draw: st.DrawFn) -> tuple[Segment, int]:
    total = draw(st.integers(min_value=2, max_value=2**50))
    start = draw(st.integers(min_value=0, max_value=total - 1))
    end = draw(st.integers(min_value=start + 1, max_value=total))
    pos = draw(st.integers(min_value=start, max_value=end - 1))
    return (start, pos, end), total


@settings(max_examples=300, deadline=None)
@given(seg_total=segments_of(), last=st.integers(min_value=0, max_value=2**50))
def test_a_206_is_used_only_when_it_starts_at_the_asked_position(
    seg_total: tuple[Segment, int], last: int
) -> None:
    (start, pos, end), total = seg_total
    seg = (start, pos, end)
    exact = {"content-range": f"bytes {pos}-{end - 1}/{total}"}
    assert check_segment_response(206, exact, seg, total) is SegmentAnswer.USE
    # A server that does not know the length yet ("/*") still proves the position.
    unknown = {"content-range": f"bytes {pos}-{end - 1}/*"}
    assert check_segment_response(206, unknown, seg, total) is SegmentAnswer.USE
    # A task that did not record a length accepts the 206's.
    assert check_segment_response(206, exact, seg, None) is SegmentAnswer.USE
    other_total = {"content-range": f"bytes {pos}-{end - 1}/{total + 1}"}
    assert check_segment_response(206, other_total, seg, total) is SegmentAnswer.RESTART
    if last >= pos + 1:
        shifted = {"content-range": f"bytes {pos + 1}-{last}/*"}
        assert check_segment_response(206, shifted, seg, total) is SegmentAnswer.RESTART
    unsatisfied = {"content-range": f"bytes */{total}"}
    assert check_segment_response(206, unsatisfied, seg, total) is SegmentAnswer.RESTART
    assert check_segment_response(206, {}, seg, total) is SegmentAnswer.RESTART


@settings(max_examples=200, deadline=None)
@given(seg_total=segments_of(), status=st.integers(min_value=100, max_value=599))
def test_every_status_has_one_meaning_for_a_segment(
    seg_total: tuple[Segment, int], status: int
) -> None:
    seg, total = seg_total
    assume(status != 206)
    answer = check_segment_response(status, {}, seg, total)
    if status in RETRYABLE_STATUS:
        assert answer is SegmentAnswer.RETRY
    elif status == 200 or status in REDIRECT_STATUS or status == 416:
        # A new version (If-Range did not match), or a URL that no longer serves this file.
        assert answer is SegmentAnswer.RESTART
    else:
        assert answer is SegmentAnswer.FAIL


def test_a_416_on_a_segment_restarts_the_file() -> None:
    seg = (0, 10, 2 * MiB)
    answer = check_segment_response(416, {"content-range": "bytes */5"}, seg, 4 * MiB)
    assert answer is SegmentAnswer.RESTART


# -- planning ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=64),
    total=st.integers(min_value=0, max_value=64 * MiB) | st.integers(min_value=0, max_value=2**45),
)
def test_a_plan_tiles_the_file_in_nearly_equal_segments(n: int, total: int) -> None:
    segs, why = plan_segments(n, 200, ranged(total), total)
    if total < 2 * MIN_SEGMENT:
        assert segs == ()
        assert why == f"the file is smaller than {2 * MIN_SEGMENT} bytes"
        return
    expected = min(n, MAX_SEGMENTS, total // MIN_SEGMENT)
    assert len(segs) == expected
    assert why == f"{expected} segments"
    assert segs[0][0] == 0
    assert segs[-1][2] == total
    assert all(a[2] == b[0] for a, b in itertools.pairwise(segs))
    assert all(start == pos for start, pos, _ in segs)
    sizes = [end - start for start, _, end in segs]
    assert all(isinstance(x, int) for seg in segs for x in seg)
    assert max(sizes) - min(sizes) <= 1
    assert sorted(sizes, reverse=True) == sizes  # the larger ones first
    assert min(sizes) >= MIN_SEGMENT


def test_the_split_threshold_is_exactly_two_minimum_segments() -> None:
    at = 2 * MIN_SEGMENT
    assert len(plan_segments(8, 200, ranged(at), at)[0]) == 2
    assert plan_segments(8, 200, ranged(at - 1), at - 1)[0] == ()
    big = 1 << 40
    assert len(plan_segments(1000, 200, ranged(big), big)[0]) == MAX_SEGMENTS == 16


def test_one_connection_is_never_split() -> None:
    assert plan_segments(1, 200, ranged(64 * MiB), 64 * MiB) == ((), "one segment requested")
    assert plan_segments(0, 200, ranged(64 * MiB), 64 * MiB)[0] == ()


def test_accept_ranges_is_a_case_insensitive_list_of_units() -> None:
    total = 8 * MiB

    def plan(value: str) -> int:
        return len(plan_segments(2, 200, {**ranged(total), "accept-ranges": value}, total)[0])

    for value in ("bytes", "Bytes", " BYTES ", "none, bytes", "none,bytes", "bytes,none"):
        assert plan(value) == 2, value
    for value in ("none", "", "bytesx", "nonbytes", "byte"):
        assert plan(value) == 0, value
    segs, why = plan_segments(2, 200, {**ranged(total), "accept-ranges": "none"}, total)
    assert (segs, why) == ((), "the server does not accept ranges")


def test_a_206_first_answer_must_cover_the_file_from_byte_zero() -> None:
    total = 8 * MiB
    whole = {"etag": ETAG, "content-range": f"bytes 0-{total - 1}/{total}"}
    assert len(plan_segments(2, 206, whole, total)[0]) == 2
    why_not = "the first answer's Content-Range is not the whole file"
    late = {"etag": ETAG, "content-range": f"bytes 1-{total - 1}/{total}"}
    assert plan_segments(2, 206, late, total) == ((), why_not)
    other = {"etag": ETAG, "content-range": f"bytes 0-{total - 1}/{total + 1}"}
    assert plan_segments(2, 206, other, total) == ((), why_not)
    assert plan_segments(2, 206, {"etag": ETAG}, total) == ((), why_not)


def test_the_reasons_a_plan_is_declined() -> None:
    total = 8 * MiB
    assert plan_segments(2, 203, ranged(total), total) == ((), "the server answered 203")
    assert plan_segments(2, 200, ranged(total), None) == ((), "the length is unknown")
    weak = {**ranged(total), "etag": 'W/"x"'}
    assert plan_segments(2, 200, weak, total) == (
        (),
        "no strong ETag or Last-Modified to keep the segments of one version",
    )


# -- taking over half of a busy segment ----------------------------------------------------


@st.composite
def tilings(draw: st.DrawFn) -> tuple[tuple[Segment, ...], set[int]]:
    sizes = draw(st.lists(st.integers(min_value=1, max_value=16 * MiB), min_size=1, max_size=8))
    segs: list[Segment] = []
    start = 0
    for size in sizes:
        done = draw(st.integers(min_value=0, max_value=size))
        segs.append((start, start + done, start + size))
        start += size
    busy = draw(st.sets(st.integers(min_value=0, max_value=len(segs) - 1)))
    return tuple(segs), busy


@settings(max_examples=300, deadline=None)
@given(tiling=tilings())
def test_a_split_halves_the_largest_busy_remainder(
    tiling: tuple[tuple[Segment, ...], set[int]],
) -> None:
    segs, busy = tiling
    left = {i: segs[i][2] - segs[i][1] for i in busy}
    out = split_largest(segs, busy)
    if not left or max(left.values()) < 2 * MIN_SEGMENT:
        assert out is None
        return
    assert out is not None
    new, index = out
    assert index == len(segs) == len(new) - 1
    largest = max(left.values())
    (split,) = [i for i in range(len(segs)) if new[i] != segs[i]]
    assert left[split] == largest
    start, pos, end = segs[split]
    kept, given_away = new[split], new[index]
    assert kept[:2] == (start, pos)  # written bytes stay with their connection
    assert kept[2] == given_away[0] == given_away[1]  # the new one has written nothing
    assert given_away[2] == end
    assert all(isinstance(x, int) for x in (*kept, *given_away))
    halves = (kept[2] - pos, end - given_away[0])
    assert halves[0] + halves[1] == largest
    assert abs(halves[0] - halves[1]) <= 1
    assert min(halves) >= MIN_SEGMENT
    # The tiling of the file is unchanged, and so is the progress.
    ordered = sorted(new)
    assert all(a[2] == b[0] for a, b in itertools.pairwise(ordered))
    assert sum(p - s for s, p, _ in new) == sum(p - s for s, p, _ in segs)


def test_a_split_at_exactly_two_minimum_segments_and_an_odd_remainder() -> None:
    at = 2 * MIN_SEGMENT
    out = split_largest(((0, 0, at),), {0})
    assert out == (((0, 0, MIN_SEGMENT), (MIN_SEGMENT, MIN_SEGMENT, at)), 1)
    assert split_largest(((0, 1, at),), {0}) is None
    odd = split_largest(((0, 0, at + 1),), {0})
    assert odd == (((0, 0, MIN_SEGMENT), (MIN_SEGMENT, MIN_SEGMENT, at + 1)), 1)
    assert split_largest(((0, 0, 8 * MiB),), set()) is None


@settings(max_examples=200, deadline=None)
@given(tiling=tilings())
def test_the_first_unfinished_segment(tiling: tuple[tuple[Segment, ...], set[int]]) -> None:
    segs, _ = tiling
    i = first_unfinished(segs)
    if i is None:
        assert all(pos == end for _, pos, end in segs)
    else:
        assert segs[i][1] < segs[i][2]
        assert all(pos == end for _, pos, end in segs[:i])
        assert segment_range(segs[i]) == f"bytes={segs[i][1]}-{segs[i][2] - 1}"


def test_segments_of_a_file_known_only_by_a_strong_last_modified_carry_it() -> None:
    # Last-Modified is a strong validator when the server's Date is a day later.
    lm, date = "Sun, 06 Nov 1994 08:49:37 GMT", "Mon, 07 Nov 1994 08:49:37 GMT"
    total = 8 * MiB
    headers = {"accept-ranges": "bytes", "last-modified": lm, "date": date}
    headers["content-length"] = str(total)
    m = TransferMachine(Spec(URL, segments=2))
    m.handle(Start(), now=0.0)
    m.handle(Response(200, headers), now=0.0)
    segs, why = plan_segments(2, 200, headers, total)
    assert len(segs) == 2, why
    m.handle(SegmentsPlanned(segs), now=0.0)
    _, request = m.segment_request(1)
    assert dict(request)["If-Range"] == lm
