"""Scheduling rules, sans I/O: rates, durations, token buckets, job periods, cool-downs,
priority order, and the machine's part (a job's 304, a queued task's wait reason)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgtransfer._engine._limiter import Limiter
from bgtransfer._exceptions import InvalidTransition
from bgtransfer._models import Phase
from bgtransfer._protocol._machine import (
    DiscardResponse,
    Finalize,
    Persist,
    RemovePartial,
    Response,
    Spec,
    Start,
    TransferMachine,
    Waiting,
)
from bgtransfer._protocol._origin import origin_key
from bgtransfer._protocol._schedule import (
    MAX_JITTER,
    CoolDowns,
    TokenBucket,
    job_jitter,
    next_run,
    parse_duration,
    parse_rate,
    parse_size,
    priority_rank,
)

MiB = 1 << 20


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("4M", 4 * MiB),
        ("4m", 4 * MiB),
        ("500K", 500 * 1024),
        ("1.5G", int(1.5 * (1 << 30))),
        ("100000", 100000),
        ("2MB/s", 2 * MiB),
        ("2MiB", 2 * MiB),
        (" 1k ", 1024),
    ],
)
def test_rates_use_curls_syntax(text: str, rate: int) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "4X", "M", "-1M", "0", "0.1", "fast", "1e9"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("2d", 172800),
     ("1w", 604800), ("1.5h", 5400), ("500ms", 0.5), ("1h 30m", 5400)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "h", "1x", "1h-", "soon", "-5m"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_priority_ranks_and_a_bad_name() -> None:
    assert priority_rank("high") < priority_rank("normal") < priority_rank("low")
    with pytest.raises(ValueError, match="priority"):
        priority_rank("urgent")


def _simulate(bucket: TokenBucket, size: int, chunk: int) -> float:
    """Read ``size`` bytes in ``chunk``s on a virtual clock, pausing as the bucket says;
    returns the time from the first byte to the last."""
    now, left = 100.0, size
    start = now
    while left > 0:
        n = min(chunk, left)
        left -= n
        now += bucket.take(n, now)
    return now - start


def test_token_bucket_holds_the_rate_over_a_whole_transfer() -> None:
    # 12 MiB at 4 MiB/s: the example; 3 s minus the 0.1 s of slack.
    took = _simulate(TokenBucket.for_rate(4 * MiB), 12 * MiB, 64 << 10)
    assert took == pytest.approx(2.9, abs=0.02)


@given(
    rate=st.integers(min_value=1 << 10, max_value=1 << 30),
    chunks=st.integers(min_value=20, max_value=400),
    chunk=st.integers(min_value=1, max_value=1 << 20),
)
def test_token_bucket_never_lets_more_than_rate_times_time_plus_burst(
    rate: int, chunks: int, chunk: int
) -> None:
    bucket = TokenBucket.for_rate(rate)
    size = chunks * chunk
    took = _simulate(bucket, size, chunk)
    # Whatever the chunking, what was read is at most rate * time + the slack.
    assert size <= rate * took + bucket.burst + 1e-6 * size


def test_token_bucket_rate_can_change_at_run_time() -> None:
    b = TokenBucket.for_rate(MiB)
    assert b.take(MiB, 0.0) == pytest.approx(0.9)  # 0.1 MiB of slack, 0.9 MiB in debt
    b.set_rate(4 * MiB, 0.0)
    assert b.take(0, 0.0) == pytest.approx(0.9 / 4)  # the debt is paid at the new rate
    # A second later the debt is paid and 0.4 MiB of slack is back: 3.6 MiB to wait for.
    assert b.take(4 * MiB, 1.0) == pytest.approx(0.9)


def test_idle_time_buys_no_more_than_the_burst() -> None:
    b = TokenBucket.for_rate(MiB)
    b.take(1, 0.0)
    # After an hour idle the slack is still only a tenth of a second's worth.
    assert b.take(MiB, 3600.0) == pytest.approx(0.9, abs=1e-6)


def test_next_run_keeps_the_grid_and_catches_up_once() -> None:
    assert next_run(1000.0, 60.0, 1000.0, 0.0) == 1060.0  # ran at the anchor
    assert next_run(1000.0, 60.0, 1059.0, 0.0) == 1060.0
    assert next_run(1000.0, 60.0, 1060.0, 0.0) == 1120.0
    # Down for 10 periods: the caller runs it now, once; the next is the next grid point.
    assert next_run(1000.0, 60.0, 1000.0 + 10 * 60 + 5, 0.0) == 1000.0 + 11 * 60
    # Before the start time: the start time.
    assert next_run(1000.0, 60.0, 900.0, 0.0) == 1000.0


@given(
    anchor=st.floats(min_value=0, max_value=2e9),
    every=st.floats(min_value=1, max_value=1e7),
    after=st.floats(min_value=0, max_value=1e9),
    jitter=st.floats(min_value=0, max_value=0.999999),
)
def test_next_run_is_after_now_within_one_period_plus_jitter(
    anchor: float, every: float, after: float, jitter: float
) -> None:
    now = anchor + after
    t = next_run(anchor, every, now, jitter)
    assert t > now
    assert t <= now + every + job_jitter(every, jitter) + 1e-6 * max(1.0, now)
    assert 0 <= job_jitter(every, jitter) <= min(every * 0.1, MAX_JITTER)


def test_jitter_is_small_and_bounded() -> None:
    assert job_jitter(3600.0, 0.999) == pytest.approx(30.0, rel=0.01)  # capped at 30 s
    assert job_jitter(10.0, 0.5) == pytest.approx(0.5)  # 10 % of the period at most
    assert job_jitter(10.0, 0.0) == 0.0


def test_retry_after_cools_the_whole_origin_down() -> None:
    c = CoolDowns()
    o = "http://a:80"
    assert c.not_before(o, 0.0) == 0.0
    assert c.on_response(o, 503, 30.0, 100.0) == 130.0
    assert c.not_before(o, 110.0) == 130.0
    assert c.not_before("http://b:80", 110.0) == 0.0  # another origin is not affected
    assert c.not_before(o, 130.0) == 0.0
    assert c.reason(o) == "503"


def test_a_503_without_retry_after_is_one_tasks_problem() -> None:
    c = CoolDowns()
    assert c.on_response("http://a:80", 503, None, 0.0) is None
    assert c.not_before("http://a:80", 0.0) == 0.0


def test_repeated_429s_back_off_per_origin_and_a_success_resets() -> None:
    c = CoolDowns()
    o = "http://a:80"
    waits = []
    now = 0.0
    for _ in range(5):
        until = c.on_response(o, 429, None, now)
        assert until is not None
        waits.append(until - now)
        now = until
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0]
    # Retry-After shorter than the backoff: the backoff wins; longer: Retry-After wins.
    assert c.on_response(o, 429, 1.0, now) == now + 32.0
    assert c.on_response(o, 429, 1000.0, now) == now + 1000.0
    c.on_response(o, 200, None, now + 2000)
    assert c.on_response(o, 429, None, now + 2000) == now + 2001.0


def test_a_shorter_retry_after_does_not_shorten_a_cool_down() -> None:
    c = CoolDowns()
    c.on_response("http://a:80", 503, 60.0, 0.0)
    assert c.on_response("http://a:80", 503, 5.0, 1.0) == 60.0


def test_origin_key_spells_out_the_default_port() -> None:
    assert origin_key("http://Example.COM/x?y") == "http://example.com:80"
    assert origin_key("https://example.com:443/") == "https://example.com:443"
    assert origin_key("https://example.com:8443/a") == "https://example.com:8443"
    assert origin_key("http://[::1]:8080/") == "http://[::1]:8080"


# -- priority order in the limiter ------------------------------------------------------------


def test_a_high_priority_task_gets_the_next_slot_before_waiting_normal_ones() -> None:
    async def go() -> list[str]:
        lim = Limiter(total=1, per_host=6)
        order: list[str] = []
        hold = asyncio.Event()

        async def user(name: str, prio: int, gate: asyncio.Event | None = None) -> None:
            async with lim.slot("h", prio):
                order.append(name)
                if gate is not None:
                    await gate.wait()

        first = asyncio.create_task(user("first", 1, hold))
        await asyncio.sleep(0)
        waiters = [
            asyncio.create_task(user(n, p))
            for n, p in [("low1", 2), ("normal1", 1), ("low2", 2), ("high1", 0), ("normal2", 1)]
        ]
        for _ in range(3):
            await asyncio.sleep(0)
        hold.set()
        await asyncio.wait_for(asyncio.gather(first, *waiters), 5)
        return order

    assert asyncio.run(go()) == ["first", "high1", "normal1", "normal2", "low1", "low2"]


# -- the machine's part -------------------------------------------------------------------------


def _connecting(spec: Spec) -> TransferMachine:
    m = TransferMachine(spec)
    m.handle(Start(), now=0.0)
    return m


def test_a_jobs_304_completes_without_touching_the_file() -> None:
    m = _connecting(Spec("http://a/x", job_id="j1", headers=(("If-None-Match", '"v1"'),)))
    actions = m.handle(Response(304, {"etag": '"v1"'}), now=1.0)
    assert actions == [DiscardResponse(), RemovePartial(), Persist()]
    assert not any(isinstance(a, Finalize) for a in actions)
    assert m.snap.phase is Phase.DONE
    assert m.snap.error is None
    assert m.snap.detail == "not modified"
    assert m.snap.status_code == 304


def test_a_304_outside_a_job_is_still_a_failure() -> None:
    m = _connecting(Spec("http://a/x"))
    m.handle(Response(304, {}), now=1.0)
    assert m.snap.phase is Phase.DONE
    assert m.snap.error is not None


def test_waiting_says_why_a_queued_task_is_held_and_nothing_else() -> None:
    m = TransferMachine(Spec("http://a/x"))
    assert m.handle(Waiting("origin asked to wait until 12:00:00"), now=0.0) == [Persist()]
    assert m.snap.phase is Phase.QUEUED
    assert m.snap.detail.startswith("origin asked to wait")
    m.handle(Start(), now=0.0)
    with pytest.raises(InvalidTransition):
        m.handle(Waiting("x"), now=0.0)


def test_uncapped_reads_keep_the_engines_read_size() -> None:
    from bgtransfer._engine import _engine, _pacing
    from bgtransfer._engine._ratelimit import MIN_READ, read_size_for

    assert _pacing.READ_SIZE == _engine.READ_SIZE
    assert read_size_for(None, _engine.READ_SIZE) == _engine.READ_SIZE
    assert read_size_for(64 << 10, _engine.READ_SIZE) == MIN_READ  # small reads under a cap
    assert read_size_for(4 * MiB, _engine.READ_SIZE) == 4 * MiB // 10


def test_an_endless_retry_after_does_not_shut_the_origin_forever() -> None:
    c = CoolDowns()
    assert c.on_response("http://a:80", 503, float("inf"), 10.0) == 10.0 + 3600.0
    assert c.on_response("http://b:80", 429, 10 * 86400.0, 10.0) == 10.0 + 3600.0


def test_a_restored_cool_down_holds_and_never_shortens_a_longer_one() -> None:
    c = CoolDowns()
    c.restore("http://a:80", 50.0, "429")
    assert c.not_before("http://a:80", 10.0) == 50.0
    assert c.reason("http://a:80") == "429"
    c.on_response("http://b:80", 503, 100.0, 0.0)
    c.restore("http://b:80", 20.0, "503")
    assert c.not_before("http://b:80", 10.0) == 100.0


def test_sizes_are_whole_bytes_with_curls_suffixes() -> None:
    assert parse_size("7") == 7
    assert parse_size("10k") == 10 << 10
    assert parse_size(" 2G ") == 2 << 30
    assert parse_size("1T") == 1 << 40
    for bad in ("ten", "1.5M", "-3", "5X", "", "k", "1MM", "4M/s", "1" * 16):
        with pytest.raises(ValueError, match="is not a size"):
            parse_size(bad)
