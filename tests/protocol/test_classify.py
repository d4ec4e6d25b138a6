"""What to do with an answer to ``Range: bytes=offset-`` (curl test 1156 style matrix)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgtransfer._protocol._machine import _Decision, classify_response
from bgtransfer._protocol._ranges import parse_content_range

D = _Decision
N = 1000  # full length of the representation in the table
CR = "content-range"

CASES: list[tuple[str, int, dict[str, str], int, int | None, _Decision]] = [
    # -- fresh requests (offset 0)
    ("fresh 200", 200, {}, 0, None, D.FRESH),
    ("fresh 200 with length", 200, {"content-length": str(N)}, 0, None, D.FRESH),
    ("fresh 200 ignores Content-Range", 200, {CR: f"bytes 0-{N - 1}/{N}"}, 0, None, D.FRESH),
    ("fresh 206 full", 206, {CR: f"bytes 0-{N - 1}/{N}"}, 0, None, D.FRESH),
    ("fresh 206 from 0, partial", 206, {CR: f"bytes 0-499/{N}"}, 0, None, D.FRESH),
    ("fresh 206 not from 0", 206, {CR: f"bytes 500-{N - 1}/{N}"}, 0, None, D.RESTART),
    ("fresh 416", 416, {CR: f"bytes */{N}"}, 0, None, D.FAIL),
    ("fresh 416 no Content-Range", 416, {}, 0, None, D.FAIL),
    # -- resume: 206 whose range starts exactly at the offset
    ("206 matching", 206, {CR: f"bytes 400-{N - 1}/{N}"}, 400, N, D.APPEND),
    ("206 matching, total unknown", 206, {CR: f"bytes 400-{N - 1}/{N}"}, 400, None, D.APPEND),
    ("206 matching, total *", 206, {CR: "bytes 400-999/*"}, 400, N, D.APPEND),
    ("206 matching, partial range", 206, {CR: f"bytes 400-499/{N}"}, 400, N, D.APPEND),
    ("206 matching, upper-case unit", 206, {CR: f"BYTES 400-{N - 1}/{N}"}, 400, N, D.APPEND),
    # -- resume: 206 that does not continue our bytes
    ("206 wrong start (before)", 206, {CR: f"bytes 300-{N - 1}/{N}"}, 400, N, D.RESTART),
    ("206 wrong start (after)", 206, {CR: f"bytes 500-{N - 1}/{N}"}, 400, N, D.RESTART),
    ("206 full as 206", 206, {CR: f"bytes 0-{N - 1}/{N}"}, 400, N, D.FRESH),
    ("206 full as 206, new length", 206, {CR: "bytes 0-1999/2000"}, 400, N, D.FRESH),
    ("206 wrong total", 206, {CR: "bytes 400-1999/2000"}, 400, N, D.RESTART),
    ("206 without Content-Range", 206, {}, 400, N, D.RESTART),
    ("206 with bytes */N", 206, {CR: f"bytes */{N}"}, 400, N, D.RESTART),
    ("206 malformed Content-Range", 206, {CR: "bytes 400-300/1000"}, 400, N, D.RESTART),
    ("206 last beyond total", 206, {CR: "bytes 400-1000/1000"}, 400, N, D.RESTART),
    ("206 garbage Content-Range", 206, {CR: "oops"}, 400, N, D.RESTART),
    # -- resume: 200
    ("200 on resume", 200, {"content-length": str(N)}, 400, N, D.FRESH),
    (
        "200 on resume, matching Content-Range",
        200,
        {CR: f"bytes 400-{N - 1}/{N}"},
        400,
        N,
        D.APPEND,
    ),
    ("200 on resume, full Content-Range", 200, {CR: f"bytes 0-{N - 1}/{N}"}, 400, N, D.FRESH),
    ("200 on resume, wrong Content-Range", 200, {CR: f"bytes 300-{N - 1}/{N}"}, 400, N, D.RESTART),
    # -- resume: 416 Range Not Satisfiable
    ("416 */N, N == offset", 416, {CR: f"bytes */{N}"}, N, N, D.DONE),
    ("416 */N, N == offset, total unknown", 416, {CR: f"bytes */{N}"}, N, None, D.DONE),
    ("416 */N, N == offset != total", 416, {CR: f"bytes */{N}"}, N, 2 * N, D.RESTART),
    ("416 */N, N > offset", 416, {CR: f"bytes */{N}"}, 400, N, D.RESTART),
    ("416 */N, N < offset", 416, {CR: "bytes */300"}, 400, N, D.RESTART),
    # -- redirects
    *[(f"{s} redirect", s, {"location": "/x"}, 0, None, D.REDIRECT) for s in (301, 302, 303)],
    *[(f"{s} redirect on resume", s, {"location": "/x"}, 400, N, D.REDIRECT) for s in (307, 308)],
    # -- transient statuses
    *[(f"{s} retried", s, {}, 0, None, D.RETRY) for s in (408, 429, 500, 502, 503, 504)],
    *[(f"{s} retried on resume", s, {}, 400, N, D.RETRY) for s in (503, 522, 524)],
    # -- final statuses
    *[(f"{s} fails", s, {}, 0, None, D.FAIL) for s in (400, 401, 403, 404, 405, 410, 501)],
    ("404 on resume", 404, {}, 400, N, D.FAIL),
    ("304 fails", 304, {}, 0, None, D.FAIL),
    ("304 on resume", 304, {}, 400, N, D.FAIL),
]


@pytest.mark.parametrize(
    ("status", "headers", "offset", "total", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_classify_matrix(
    status: int, headers: Mapping[str, str], offset: int, total: int | None, expected: _Decision
) -> None:
    assert classify_response(status, headers, offset, total) is expected


@st.composite
def mismatched_206(draw: st.DrawFn) -> tuple[int, str, int, int | None]:
    offset = draw(st.integers(min_value=0, max_value=2**40))
    first = draw(st.integers(min_value=0, max_value=2**41).filter(lambda f: f != offset))
    last = draw(st.integers(min_value=first, max_value=first + 2**40))
    cr_total = draw(st.none() | st.integers(min_value=last + 1, max_value=last + 2**40))
    known_total = draw(st.none() | st.just(cr_total) | st.integers(min_value=0, max_value=2**42))
    value = f"bytes {first}-{last}/{'*' if cr_total is None else cr_total}"
    return offset, value, first, known_total


@settings(max_examples=300, deadline=None)
@given(case=mismatched_206(), status=st.sampled_from([200, 206]))
def test_range_not_starting_at_offset_is_never_appended(
    case: tuple[int, str, int, int | None], status: int
) -> None:
    offset, value, first, total = case
    assert first != offset
    decision = classify_response(status, {CR: value}, offset, total)
    assert decision is not D.APPEND


@settings(max_examples=300, deadline=None)
@given(
    status=st.integers(min_value=100, max_value=599),
    content_range=st.none()
    | st.text(max_size=40)
    | st.builds(
        "bytes {}-{}/{}".format,
        st.integers(0, 3000),
        st.integers(0, 3000),
        st.integers(0, 3000).map(str) | st.just("*"),
    ),
    offset=st.integers(min_value=0, max_value=3000),
    total=st.none() | st.integers(min_value=0, max_value=3000),
)
def test_append_only_with_proof(
    status: int, content_range: str | None, offset: int, total: int | None
) -> None:
    headers = {} if content_range is None else {CR: content_range}
    decision = classify_response(status, headers, offset, total)
    cr = parse_content_range(content_range)
    if decision is D.APPEND:
        assert status in (200, 206)
        assert cr is not None
        assert cr.first == offset
        assert total is None or cr.total is None or cr.total == total
    if decision is D.DONE:
        assert status == 416
        assert offset > 0
        assert cr is not None
        assert cr.total == offset
    if status == 416 and offset == 0:
        assert decision is D.FAIL
