"""Exponential backoff with equal jitter; the caller supplies the jitter draw."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgtransfer._protocol._retry import RETRYABLE_STATUS, Backoff


def raw_delay(backoff: Backoff, failures: int) -> float:
    """The un-jittered delay: base * 2**(n-1), capped (n is at least 1)."""
    n = max(1, failures)
    return min(backoff.cap, backoff.base * 2.0 ** min(n - 1, 32))


def test_defaults() -> None:
    b = Backoff()
    assert b.base == 1.0
    assert b.cap == 120.0


def test_delay_doubles_until_the_cap() -> None:
    b = Backoff(base=1.0, cap=120.0)
    # jitter 0 keeps exactly half the raw delay
    got = [b.delay(n, 0.0) for n in range(1, 11)]
    assert got == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_delay_with_jitter_close_to_one_approaches_the_raw_delay() -> None:
    b = Backoff(base=1.0, cap=120.0)
    assert b.delay(1, 0.999999) == pytest.approx(1.0, rel=1e-5)
    assert b.delay(4, 0.999999) == pytest.approx(8.0, rel=1e-5)
    assert b.delay(4, 0.5) == pytest.approx(6.0)


def test_base_scales_every_delay() -> None:
    b = Backoff(base=0.25, cap=10.0)
    assert [b.delay(n, 0.0) for n in range(1, 8)] == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 5.0]


def test_cap_is_never_exceeded() -> None:
    b = Backoff(base=1.0, cap=120.0)
    assert b.delay(8, 0.0) == 60.0
    assert b.delay(100, 0.0) == 60.0
    assert b.delay(10**9, 0.999) <= 120.0


def test_huge_failure_count_does_not_overflow() -> None:
    b = Backoff(base=1.0, cap=1e300)
    assert b.delay(10**12, 0.0) == 0.5 * 2.0**32


@pytest.mark.parametrize("failures", [0, -1, -100])
def test_failures_below_one_count_as_the_first_retry(failures: int) -> None:
    b = Backoff(base=2.0, cap=120.0)
    assert b.delay(failures, 0.0) == b.delay(1, 0.0) == 1.0


@pytest.mark.parametrize(("jitter", "expected"), [(-1.0, 4.0), (-0.0, 4.0), (1.0, 8.0), (5.0, 8.0)])
def test_out_of_range_jitter_is_clamped(jitter: float, expected: float) -> None:
    assert Backoff(base=1.0, cap=120.0).delay(4, jitter) == expected


def test_retryable_status_set() -> None:
    assert {408, 429, 500, 502, 503, 504} <= RETRYABLE_STATUS
    assert RETRYABLE_STATUS.isdisjoint({200, 206, 301, 304, 400, 401, 403, 404, 410, 416, 501})


@settings(max_examples=300, deadline=None)
@given(
    base=st.floats(min_value=1e-3, max_value=1e3),
    cap=st.floats(min_value=1e-3, max_value=1e6),
    failures=st.integers(min_value=1, max_value=10**6),
    jitter=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_jitter_bounds(base: float, cap: float, failures: int, jitter: float) -> None:
    b = Backoff(base=base, cap=cap)
    raw = raw_delay(b, failures)
    delay = b.delay(failures, jitter)
    assert 0.5 * raw <= delay <= raw <= cap


@settings(max_examples=300, deadline=None)
@given(
    base=st.floats(min_value=1e-3, max_value=1e3),
    cap=st.floats(min_value=1e-3, max_value=1e6),
    failures=st.integers(min_value=1, max_value=100),
    jitter=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_delay_never_shrinks_as_failures_grow(
    base: float, cap: float, failures: int, jitter: float
) -> None:
    b = Backoff(base=base, cap=cap)
    assert b.delay(failures, jitter) <= b.delay(failures + 1, jitter)
