"""Content-Range, If-Range validator and Retry-After parsing (RFC 9110 §14.4, §13.1.5, §10.2.3)."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgtransfer._protocol._ranges import (
    ContentRange,
    choose_validator,
    last_modified_is_strong,
    parse_content_range,
    parse_retry_after,
    range_header,
    validator_changed,
)

# 1994-11-06 08:49:37 UTC, the RFC 9110 example date, as seconds since the epoch.
RFC_DATE_EPOCH = 784111777.0
IMF_FIXDATE = "Sun, 06 Nov 1994 08:49:37 GMT"
RFC850_DATE = "Sunday, 06-Nov-94 08:49:37 GMT"
ASCTIME_DATE = "Sun Nov  6 08:49:37 1994"

# -- parse_content_range --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-99/100", ContentRange(0, 99, 100)),
        ("bytes 0-0/1", ContentRange(0, 0, 1)),
        ("bytes 100-199/200", ContentRange(100, 199, 200)),
        ("bytes 10-19/*", ContentRange(10, 19, None)),
        ("bytes */100", ContentRange(None, None, 100)),
        ("bytes */0", ContentRange(None, None, 0)),
        ("BYTES 0-9/10", ContentRange(0, 9, 10)),
        ("Bytes 0-9/10", ContentRange(0, 9, 10)),
        ("bytes\t0-9/10", ContentRange(0, 9, 10)),
        ("bytes  \t 0-9/10", ContentRange(0, 9, 10)),
        ("  bytes 0-9/10  ", ContentRange(0, 9, 10)),
        ("bytes 0-9/10\r\n", ContentRange(0, 9, 10)),
        ("bytes 5-5/6", ContentRange(5, 5, 6)),
        (f"bytes 0-{2**63 - 1}/{2**63}", ContentRange(0, 2**63 - 1, 2**63)),
    ],
)
def test_parse_content_range_valid(value: str, expected: ContentRange) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "bytes",
        "bytes ",
        "bytes 0-99",
        "bytes 0-99/",
        "bytes */*",
        "bytes 5-4/10",  # last < first
        "bytes 0-10/10",  # last >= total
        "bytes 10-10/10",  # last >= total
        "bytes 0-0/0",  # empty representation cannot hold byte 0
        "bytes=0-9/10",
        "bytes0-9/10",
        "bytes 0 - 9/10",
        "bytes -1-9/10",
        "bytes 0--9/10",
        "bytes 0-9/-10",
        "bytes 0x1-9/10",
        "bytes 0-9/10 trailing",
        "bytes 0-9/10\nbytes 0-9/10",
        "bytes 0-9,20-29/100",
        "items 0-9/10",
        "0-9/10",
        "bytes 1.5-9/10",
        "bytes */10/10",
        "bytes \u0660-\u0669/\u0661\u0660",  # Arabic-Indic digits: DIGIT is ASCII only
        "bytes 0-9/\uff11\uff10",  # full-width digits
    ],
)
def test_parse_content_range_malformed(value: str) -> None:
    assert parse_content_range(value) is None


def test_parse_content_range_absent() -> None:
    assert parse_content_range(None) is None


def test_parse_content_range_huge_number_does_not_raise() -> None:
    # A hostile server controls this header. More than 4300 digits makes int() raise
    # ValueError (Python's integer-string conversion limit); "malformed" must mean None.
    huge = "9" * 5000
    for value in (f"bytes 0-1/{huge}", f"bytes {huge}-{huge}/*", f"bytes */{huge}"):
        result = parse_content_range(value)
        assert result is None or isinstance(result, ContentRange)


def test_range_header() -> None:
    assert range_header(0) == "bytes=0-"
    assert range_header(12345) == "bytes=12345-"


@st.composite
def valid_ranges(draw: st.DrawFn) -> tuple[int, int, int | None]:
    first = draw(st.integers(min_value=0, max_value=2**64))
    last = draw(st.integers(min_value=first, max_value=first + 2**64))
    total = draw(st.none() | st.integers(min_value=last + 1, max_value=last + 2**64))
    return first, last, total


@settings(max_examples=300, deadline=None)
@given(
    rng=valid_ranges(),
    unit=st.sampled_from(["bytes", "BYTES", "Bytes", "bYtEs"]),
    sep=st.text(alphabet=" \t", min_size=1, max_size=4),
    pad=st.text(alphabet=" \t", max_size=3),
)
def test_parse_content_range_round_trip(
    rng: tuple[int, int, int | None], unit: str, sep: str, pad: str
) -> None:
    first, last, total = rng
    value = f"{pad}{unit}{sep}{first}-{last}/{'*' if total is None else total}{pad}"
    assert parse_content_range(value) == ContentRange(first, last, total)


@settings(max_examples=300, deadline=None)
@given(total=st.integers(min_value=0, max_value=2**64))
def test_parse_content_range_unsatisfied_round_trip(total: int) -> None:
    assert parse_content_range(f"bytes */{total}") == ContentRange(None, None, total)


@settings(max_examples=300, deadline=None)
@given(
    st.text() | st.from_regex(r"\s*bytes[ \t]+(\d{1,6}-\d{1,6}|\*)/(\d{1,6}|\*)\s*", fullmatch=True)
)
def test_parse_content_range_never_raises_and_is_consistent(value: str) -> None:
    cr = parse_content_range(value)
    if cr is None:
        return
    if cr.first is None:
        assert cr.last is None
        assert cr.total is not None
        return
    assert cr.last is not None
    assert 0 <= cr.first <= cr.last
    assert cr.total is None or cr.last < cr.total


# -- choose_validator ---------------------------------------------------------------------


# The Date of the response that carried the validators: one second after IMF_FIXDATE makes
# that Last-Modified strong (RFC 9110 8.8.2.2); the same second leaves it weak.
LATER = "Sun, 06 Nov 1994 08:49:38 GMT"


@pytest.mark.parametrize(
    ("etag", "last_modified", "expected"),
    [
        ('"abc"', None, '"abc"'),
        ('"abc"', IMF_FIXDATE, '"abc"'),  # a strong ETag wins over Last-Modified
        ('  "abc"  ', None, '"abc"'),
        ('""', None, '""'),  # the empty strong tag is still strong
        ('W/"abc"', IMF_FIXDATE, None),  # weak ETag: no If-Range at all (RFC 9110 13.1.5)
        ('W/"abc"', None, None),
        ('w/"abc"', IMF_FIXDATE, None),
        ("abc", IMF_FIXDATE, IMF_FIXDATE),  # unquoted: not an entity-tag
        ('"', IMF_FIXDATE, IMF_FIXDATE),
        ('"abc', IMF_FIXDATE, IMF_FIXDATE),
        ("", IMF_FIXDATE, IMF_FIXDATE),
        (None, IMF_FIXDATE, IMF_FIXDATE),
        (None, f"  {IMF_FIXDATE}  ", IMF_FIXDATE),
        (None, "yesterday", None),  # bad dates are ignored
        (None, "", None),
        (None, "0", None),
        ('W/"abc"', "not a date", None),
        (None, None, None),
    ],
)
def test_choose_validator(
    etag: str | None, last_modified: str | None, expected: str | None
) -> None:
    assert choose_validator(etag, last_modified, LATER) == expected


@pytest.mark.parametrize(
    ("date", "strong"),
    [
        (LATER, True),  # 1 s after Last-Modified
        ("Mon, 07 Nov 1994 08:49:37 GMT", True),
        (IMF_FIXDATE, False),  # modified in the second it was sent: could change again
        ("Sun, 06 Nov 1994 08:49:37 GMT", False),
        ("Sun, 06 Nov 1994 08:49:36 GMT", False),  # a Date before Last-Modified: no clock
        (None, False),  # no Date: nothing proves it strong
        ("not a date", False),
    ],
)
def test_last_modified_is_strong_only_a_second_before_date(date: str | None, strong: bool) -> None:
    assert last_modified_is_strong(IMF_FIXDATE, date) is strong
    assert (choose_validator(None, IMF_FIXDATE, date) == IMF_FIXDATE) is strong
    assert choose_validator('W/"x"', IMF_FIXDATE, date) is None


@settings(max_examples=300, deadline=None)
@given(
    etag=st.none() | st.text(),
    last_modified=st.none() | st.text(),
    date=st.none() | st.text() | st.just(LATER),
)
def test_choose_validator_never_weak(
    etag: str | None, last_modified: str | None, date: str | None
) -> None:
    chosen = choose_validator(etag, last_modified, date)
    if chosen is None:
        return
    assert not chosen.startswith("W/")
    if etag is not None and chosen == etag.strip():
        assert chosen.startswith('"')
        assert chosen.endswith('"')
        assert len(chosen) >= 2
    else:
        assert last_modified is not None
        assert chosen == last_modified.strip()
        assert email.utils.parsedate_tz(chosen) is not None
        assert last_modified_is_strong(last_modified, date)
        assert etag is None or not etag.strip().upper().startswith("W/")


# -- validator_changed ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("etag", "last_modified", "headers", "changed"),
    [
        ('"v1"', None, {"etag": '"v1"'}, False),
        ('"v1"', None, {"etag": '"v2"'}, True),  # S3 ignoring If-Range: another version
        ('"v1"', None, {"etag": 'W/"v1"'}, True),  # not the same strong tag
        ('"v1"', None, {}, False),  # left out: no evidence
        ('"v1"', IMF_FIXDATE, {"etag": '"v1"', "last-modified": LATER}, False),  # strong wins
        (None, IMF_FIXDATE, {"last-modified": IMF_FIXDATE}, False),
        (None, IMF_FIXDATE, {"last-modified": "Sunday, 06-Nov-94 08:49:37 GMT"}, False),
        (None, IMF_FIXDATE, {"last-modified": LATER}, True),
        ('W/"a"', IMF_FIXDATE, {"etag": 'W/"a"', "last-modified": IMF_FIXDATE}, False),
        ('W/"a"', IMF_FIXDATE, {"etag": 'W/"b"', "last-modified": IMF_FIXDATE}, True),
        ('W/"a"', IMF_FIXDATE, {"etag": 'W/"a"', "last-modified": LATER}, True),
        (None, None, {"etag": '"x"', "last-modified": LATER}, False),
        (None, "junk", {"last-modified": "junk"}, False),
        (None, "junk", {"last-modified": "other junk"}, True),
    ],
)
def test_validator_changed(
    etag: str | None, last_modified: str | None, headers: dict[str, str], changed: bool
) -> None:
    why = validator_changed(etag, last_modified, headers)
    assert (why is not None) is changed
    if why is not None:
        assert "changed" in why


# -- parse_retry_after --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("007", 7.0),
        ("86400", 86400.0),
    ],
)
def test_parse_retry_after_delta_seconds(value: str, expected: float) -> None:
    result = parse_retry_after(value, RFC_DATE_EPOCH)
    assert result == expected
    assert isinstance(result, float)


def test_parse_retry_after_http_date_in_future() -> None:
    assert parse_retry_after(IMF_FIXDATE, RFC_DATE_EPOCH - 30.0) == pytest.approx(30.0)


def test_parse_retry_after_http_date_now() -> None:
    assert parse_retry_after(IMF_FIXDATE, RFC_DATE_EPOCH) == 0.0


def test_parse_retry_after_http_date_in_past_is_zero() -> None:
    assert parse_retry_after(IMF_FIXDATE, RFC_DATE_EPOCH + 3600.0) == 0.0


def test_parse_retry_after_uses_the_given_wall_clock() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    value = email.utils.format_datetime(when, usegmt=True)
    assert parse_retry_after(value, when.timestamp() - 90.0) == pytest.approx(90.0)


def test_parse_retry_after_rfc850_date() -> None:
    assert parse_retry_after(RFC850_DATE, RFC_DATE_EPOCH - 30.0) == pytest.approx(30.0)


def test_parse_retry_after_asctime_date() -> None:
    # RFC 9110 §5.6.7: a recipient MUST accept all three HTTP-date formats; the asctime
    # form carries no zone and is UTC by definition.
    assert parse_retry_after(ASCTIME_DATE, RFC_DATE_EPOCH - 30.0) == pytest.approx(30.0)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "1m0s",
        "-5",
        "+5",
        "1.5",
        "5s",
        "0x10",
        "soon",
        "1e3",
        "7 seconds",
        "Sun, 06 Nov 1994 08:49:37 -0000",  # "-0000" means no zone information
        "Sun, 99 Foo 1994 08:49:37 GMT",
        "\u0663",  # Arabic-Indic three: delta-seconds is ASCII DIGIT only
        "\u00b2",  # superscript two
    ],
)
def test_parse_retry_after_garbage_is_none(value: str) -> None:
    assert parse_retry_after(value, RFC_DATE_EPOCH) is None


def test_parse_retry_after_absent() -> None:
    assert parse_retry_after(None, RFC_DATE_EPOCH) is None


@pytest.mark.parametrize("digits", [400, 5000])
def test_parse_retry_after_huge_delta_does_not_raise(digits: int) -> None:
    # Server-controlled: 400 digits overflow float() (OverflowError), 5000 digits hit the
    # int() conversion limit (ValueError). Either way the answer must be None or >= 0.
    result = parse_retry_after("1" + "0" * (digits - 1), RFC_DATE_EPOCH)
    assert result is None or result >= 0


@settings(max_examples=300, deadline=None)
@given(
    value=st.text()
    | st.integers(min_value=0, max_value=2**64).map(str)
    | st.datetimes(timezones=st.just(UTC)).map(lambda d: email.utils.format_datetime(d, True)),
    wall_now=st.floats(min_value=0, max_value=4e9, allow_nan=False),
)
def test_parse_retry_after_never_raises(value: str, wall_now: float) -> None:
    result = parse_retry_after(value, wall_now)
    assert result is None or result >= 0


@settings(max_examples=300, deadline=None)
@given(
    when=st.datetimes(
        min_value=datetime(1971, 1, 1),  # noqa: DTZ001 - bounds for a UTC strategy
        max_value=datetime(9000, 1, 1),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
    ahead=st.integers(min_value=-(10**6), max_value=10**6),
)
def test_parse_retry_after_date_round_trip(when: datetime, ahead: int) -> None:
    when = when.replace(microsecond=0)
    value = email.utils.format_datetime(when, usegmt=True)
    result = parse_retry_after(value, when.timestamp() - ahead)
    assert result == pytest.approx(max(0.0, float(ahead)))
