"""retry_for (fail fast when a transfer cannot start) and the short-body rule (issue 12)."""

from __future__ import annotations

from bgtransfer._exceptions import ConnectError, IntegrityError, ReadError
from bgtransfer._protocol._machine import (
    Action,
    BodyEnded,
    DataWritten,
    DiscardResponse,
    Response,
    RetryDue,
    ScheduleRetry,
    SendRequest,
    Start,
    TransferMachine,
    TransportFailed,
)
from tests.protocol.test_machine import assert_failed, make


def fail_once(m: TransferMachine, now: float) -> list[Action]:
    m.handle(Start(), now=now)
    return m.handle(TransportFailed(ConnectError("connection refused")), now=now)


def test_retry_for_gives_up_once_failures_last_that_long() -> None:
    m = make(retry_for=10.0, retry_wait=4.0, max_retry_wait=4.0)
    assert fail_once(m, 0.0)[-1] == ScheduleRetry(3.0)  # equal jitter, rng 0.5
    m.handle(RetryDue(), now=3.0)
    assert fail_once(m, 3.0)[-1] == ScheduleRetry(3.0)
    m.handle(RetryDue(), now=6.0)
    # 6 s of failing: the next backoff (3 s) still fits, then only 1 s is left.
    assert fail_once(m, 6.0)[-1] == ScheduleRetry(3.0)
    m.handle(RetryDue(), now=9.0)
    assert fail_once(m, 9.0)[-1] == ScheduleRetry(1.0)  # the last try at the deadline
    m.handle(RetryDue(), now=10.0)
    actions = fail_once(m, 10.0)
    assert_failed(m, actions, ConnectError)
    assert m.snap.error is not None
    assert "gave up after 5 attempts in 10 s without a byte" in m.snap.error.message


def test_bytes_arriving_start_the_retry_for_window_again() -> None:
    m = make(retry_for=5.0, retry_wait=2.0, max_retry_wait=2.0)
    fail_once(m, 0.0)
    m.handle(RetryDue(), now=4.0)
    m.handle(Start(), now=4.0)
    m.handle(Response(200, {"etag": '"v1"', "content-length": "100"}), now=4.0)
    m.handle(DataWritten(10), now=4.5)  # progress: failures so far are forgiven
    actions = m.handle(TransportFailed(ReadError("connection lost at byte 10")), now=4.5)
    assert isinstance(actions[-1], ScheduleRetry)
    m.handle(RetryDue(), now=8.0)
    m.handle(Start(), now=8.0)
    actions = m.handle(TransportFailed(ConnectError("connection refused")), now=8.0)
    assert isinstance(actions[-1], ScheduleRetry)  # 3.5 s of failing, not 8


def test_without_retry_for_the_machine_keeps_retrying() -> None:
    m = make(retry_wait=1.0, max_retry_wait=1.0)
    for i in range(50):
        assert isinstance(fail_once(m, float(i))[-1], ScheduleRetry)
        m.handle(RetryDue(), now=float(i))


def test_a_content_length_larger_than_the_body_is_a_short_body() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": '"v1"', "content-length": "1000"}), now=0.0)
    m.handle(DataWritten(900), now=0.0)
    m.handle(BodyEnded(), now=0.0)  # truncated: retried from byte 900
    m.handle(RetryDue(), now=1.0)
    actions = m.handle(Start(), now=1.0)
    assert any(isinstance(a, SendRequest) for a in actions)
    actions = m.handle(Response(416, {"content-range": "bytes */900"}), now=1.0)
    assert DiscardResponse() in actions
    assert_failed(m, actions, IntegrityError)
    assert m.snap.error is not None
    assert m.snap.error.message.startswith("short body: the server sent 900 bytes")
    assert m.snap.restarts == 0


def test_a_416_with_another_length_still_restarts() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": '"v1"', "content-length": "1000"}), now=0.0)
    m.handle(DataWritten(900), now=0.0)
    m.handle(BodyEnded(), now=0.0)
    m.handle(RetryDue(), now=1.0)
    m.handle(Start(), now=1.0)
    actions = m.handle(Response(416, {"content-range": "bytes */500"}), now=1.0)
    assert any(isinstance(a, SendRequest) for a in actions)  # restart from 0
    assert m.snap.restarts == 1
