"""Retry-After and Content-Range as rules over their input space, in any machine time zone.

HTTP dates are GMT by definition (RFC 9110 §5.6.7), including the two obsolete forms that
carry no zone at all; what the machine's zone is must never change a wait.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgtransfer._protocol._ranges import ContentRange, parse_content_range, parse_retry_after

RFC_DATE_EPOCH = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
DATES_OF_RFC_DATE_EPOCH = (
    "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
    "Sunday, 06-Nov-94 08:49:37 GMT",  # RFC 850
    "Sun Nov  6 08:49:37 1994",  # asctime: no zone, GMT by definition
)
# America/New_York's rule as a POSIX TZ string: it needs no zoneinfo files, so the test
# cannot silently fall back to UTC on a machine without tzdata.
NEW_YORK = "EST5EDT,M3.2.0,M11.1.0"


@contextlib.contextmanager
def machine_zone(tz: str) -> Iterator[None]:
    """Run with the process's local zone set to ``tz``, and restore it after."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TZ", tz)
        time.tzset()
        try:
            yield
        finally:
            mp.undo()
            time.tzset()


@pytest.fixture
def new_york() -> Iterator[None]:
    with machine_zone(NEW_YORK):
        assert time.timezone == 5 * 3600  # the zone really is in force
        yield


@pytest.mark.usefixtures("new_york")
@pytest.mark.parametrize("value", DATES_OF_RFC_DATE_EPOCH)
def test_an_http_date_means_the_same_wait_in_new_york(value: str) -> None:
    assert parse_retry_after(value, RFC_DATE_EPOCH - 30.0) == pytest.approx(30.0)
    assert parse_retry_after(value, RFC_DATE_EPOCH + 30.0) == 0.0


@pytest.mark.usefixtures("new_york")
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    when=st.datetimes(
        min_value=datetime(1971, 1, 1),  # noqa: DTZ001 - bounds for a UTC strategy
        max_value=datetime(2200, 1, 1),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
    ahead=st.integers(min_value=0, max_value=10**6),
)
def test_an_asctime_date_is_gmt_whatever_the_zone(when: datetime, ahead: int) -> None:
    when = when.replace(microsecond=0)
    asctime = f"{when:%a %b} {when.day:2d} {when:%H:%M:%S %Y}"
    assert email.utils.parsedate_tz(asctime) is not None
    result = parse_retry_after(asctime, when.timestamp() - ahead)
    assert result == pytest.approx(float(ahead))


def test_the_zone_is_restored_afterwards() -> None:
    before = time.timezone
    with machine_zone(NEW_YORK):
        assert time.timezone == 5 * 3600
    assert time.timezone == before


# -- delta-seconds -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(seconds=st.integers(min_value=0, max_value=10**9 - 1), zeros=st.integers(0, 3))
def test_up_to_nine_digits_are_a_wait_in_seconds(seconds: int, zeros: int) -> None:
    value = "0" * zeros + str(seconds)
    expected = float(seconds) if len(value) <= 9 else math.inf
    assert parse_retry_after(value, 0.0) == expected
    assert parse_retry_after(f" {value}\t", 0.0) == expected


def test_nine_digits_are_a_wait_and_ten_are_forever() -> None:
    assert parse_retry_after("999999999", 0.0) == 999999999.0
    assert parse_retry_after("1000000000", 0.0) == math.inf


def test_a_date_with_an_unknown_zone_is_ignored_and_a_past_date_is_now() -> None:
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 -0000", RFC_DATE_EPOCH) is None
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 +0000", RFC_DATE_EPOCH - 5) == 5.0
    assert parse_retry_after("Sun, 06 Nov 1994 03:49:37 -0500", RFC_DATE_EPOCH - 5) == 5.0
    assert parse_retry_after(DATES_OF_RFC_DATE_EPOCH[0], math.nan) is None


# -- Content-Range -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    first=st.integers(min_value=0, max_value=10**20 - 1),
    length=st.integers(min_value=1, max_value=10**6),
    slack=st.integers(min_value=-2, max_value=2),
)
def test_a_content_range_is_accepted_exactly_when_it_fits_its_total(
    first: int, length: int, slack: int
) -> None:
    last = first + length - 1
    total = last + 1 + slack
    value = f"bytes {first}-{last}/{total}"
    digits_ok = all(len(str(x)) <= 20 for x in (first, last, total)) and total >= 0
    if not digits_ok or last >= total:
        assert parse_content_range(value) is None
    else:
        assert parse_content_range(value) == ContentRange(first, last, total)


def test_twenty_digits_are_a_length_and_twenty_one_are_not() -> None:
    twenty = "9" * 20
    assert parse_content_range(f"bytes */{twenty}") == ContentRange(None, None, int(twenty))
    assert parse_content_range(f"bytes 0-0/{twenty}") == ContentRange(0, 0, int(twenty))
    assert parse_content_range(f"bytes */{twenty}9") is None
    assert parse_content_range(f"bytes 0-{twenty}9/*") is None
    assert parse_content_range(f"bytes {twenty}9-{twenty}9/*") is None
