"""Issue 11, "what servers say": the pure rules (no I/O, explicit clock values)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bgtransfer._exceptions import FileTooLarge, HTTPStatusError, ReadError, TransferTimeout
from bgtransfer._models import Phase, TaskState
from bgtransfer._protocol._machine import (
    DEFAULT_LOW_SPEED_LIMIT,
    MAX_SLOW_ATTEMPTS,
    Action,
    BodyEnded,
    DataWritten,
    DiscardResponse,
    Persist,
    RemovePartial,
    Response,
    RetryDue,
    ScheduleRetry,
    SendRequest,
    Spec,
    Start,
    SuspendRequested,
    TransferMachine,
    TransportFailed,
    WriteBody,
)
from bgtransfer._protocol._upload import FinalResponse, UploadMachine, UploadProgress

URL = "https://example.com/f.bin"
SIZE = 1000


def headers_of(actions: Sequence[Action]) -> dict[str, str]:
    sends = [a for a in actions if isinstance(a, SendRequest)]
    assert len(sends) == 1, actions
    return {k.lower(): v for k, v in sends[0].headers}


def cut_after(m: TransferMachine, first: Response, written: int) -> None:
    m.handle(Start(), now=0.0)
    m.handle(first, now=0.0)
    m.handle(DataWritten(written), now=0.0)
    m.handle(BodyEnded(), now=0.0)
    assert m.snap.phase is Phase.WAITING_RETRY
    m.handle(RetryDue(), now=0.0)


# -- 11: a 206 of another version is a restart, never an append ---------------------------


@pytest.mark.parametrize(
    ("first", "resume"),
    [
        ({"etag": '"v1"'}, {"etag": '"v2"'}),
        (
            {
                "last-modified": "Wed, 01 Jan 2020 00:00:00 GMT",
                "date": "Thu, 02 Jan 2020 00:00:00 GMT",
            },
            {"last-modified": "Wed, 01 Jan 2020 01:00:00 GMT"},
        ),
    ],
)
def test_a_206_with_another_validator_restarts(
    first: dict[str, str], resume: dict[str, str]
) -> None:
    m = TransferMachine(Spec(URL))
    cut_after(m, Response(200, {"content-length": str(SIZE), **first}), 400)
    hdrs = headers_of(m.handle(Start(), now=1.0))
    assert hdrs["range"] == "bytes=400-"
    assert "if-range" in hdrs  # sent; a server like S3 ignores it
    cr = {"content-range": f"bytes 400-{SIZE - 1}/{SIZE}"}
    actions = m.handle(Response(206, {**cr, **resume}), now=1.0)
    assert not any(isinstance(a, WriteBody) for a in actions)
    assert actions[0] == DiscardResponse()
    fresh = headers_of(actions)
    assert "range" not in fresh  # from byte 0, for the new version
    assert "if-range" not in fresh
    assert m.snap.offset == 0
    assert m.snap.restarts == 1
    assert "changed" in m.snap.detail
    # The new version's 200 begins the file again.
    assert m.handle(Response(200, {"content-length": str(SIZE), **resume}), now=1.1) == [
        Persist(),
        WriteBody(0, truncate=True),
    ]


def test_a_206_with_the_same_validator_appends() -> None:
    m = TransferMachine(Spec(URL))
    cut_after(m, Response(200, {"content-length": str(SIZE), "etag": '"v1"'}), 400)
    m.handle(Start(), now=1.0)
    cr = {"content-range": f"bytes 400-{SIZE - 1}/{SIZE}", "etag": '"v1"'}
    assert m.handle(Response(206, cr), now=1.0) == [WriteBody(400, truncate=False)]


def test_weak_last_modified_is_not_sent_but_still_checked() -> None:
    # Last-Modified in the very second of the Date: weak, so no If-Range; the 206's own
    # date still tells a new version apart.
    lm = "Wed, 01 Jan 2020 00:00:00 GMT"
    m = TransferMachine(Spec(URL))
    first = {"content-length": str(SIZE), "last-modified": lm, "date": lm}
    cut_after(m, Response(200, first), 400)
    hdrs = headers_of(m.handle(Start(), now=1.0))
    assert hdrs["range"] == "bytes=400-"
    assert "if-range" not in hdrs
    cr = {"content-range": f"bytes 400-{SIZE - 1}/{SIZE}"}
    later = {**cr, "last-modified": "Wed, 01 Jan 2020 00:00:05 GMT"}
    actions = m.handle(Response(206, later), now=1.0)
    assert not any(isinstance(a, WriteBody) for a in actions)
    assert m.snap.restarts == 1


# -- 15: max_bytes -------------------------------------------------------------------------


def test_max_bytes_fails_an_announced_length_before_writing() -> None:
    m = TransferMachine(Spec(URL, max_bytes=999))
    m.handle(Start(), now=0.0)
    actions = m.handle(Response(200, {"content-length": "1000"}), now=0.0)
    assert actions[0] == DiscardResponse()
    assert not any(isinstance(a, WriteBody) for a in actions)
    assert RemovePartial() in actions
    assert isinstance(m.snap.error, FileTooLarge)
    assert "1000" in m.snap.error.message
    assert m.state is TaskState.COMPLETED


def test_max_bytes_allows_exactly_the_limit() -> None:
    m = TransferMachine(Spec(URL, max_bytes=1000))
    m.handle(Start(), now=0.0)
    assert m.handle(Response(200, {"content-length": "1000"}), now=0.0) == [
        Persist(),
        WriteBody(0, truncate=True),
    ]
    m.handle(DataWritten(1000), now=0.0)
    assert m.snap.error is None


def test_max_bytes_fails_a_body_that_grows_past_it() -> None:
    m = TransferMachine(Spec(URL, max_bytes=1000))
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"transfer-encoding": "chunked"}), now=0.0)  # no length
    assert m.handle(DataWritten(600), now=0.0) in ([], [Persist()])
    actions = m.handle(DataWritten(600), now=0.0)
    assert RemovePartial() in actions
    assert isinstance(m.snap.error, FileTooLarge)
    assert "grew past" in m.snap.error.message


def test_max_bytes_checks_the_total_a_resume_announces() -> None:
    m = TransferMachine(Spec(URL, max_bytes=1000))
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": '"v1"'}), now=0.0)  # no length known
    m.handle(DataWritten(400), now=0.0)
    m.handle(TransportFailed(ReadError("reset")), now=0.0)
    m.handle(RetryDue(), now=0.0)
    m.handle(Start(), now=1.0)
    actions = m.handle(Response(206, {"content-range": "bytes 400-4999/5000"}), now=1.0)
    assert not any(isinstance(a, WriteBody) for a in actions)
    assert isinstance(m.snap.error, FileTooLarge)


# -- 15: the low-speed rule ----------------------------------------------------------------


def test_the_low_speed_rule_is_on_by_default() -> None:
    assert Spec(URL).low_speed_limit == DEFAULT_LOW_SPEED_LIMIT > 0


def test_a_trickling_server_does_not_reset_the_backoff_and_is_given_up() -> None:
    m = TransferMachine(Spec(URL, retry_wait=1.0, max_retry_wait=1000.0))
    delays = []
    now = 0.0
    for n in range(1, MAX_SLOW_ATTEMPTS + 1):
        m.handle(Start(), now=now)
        if n == 1:
            m.handle(Response(200, {"content-length": str(SIZE), "etag": '"v"'}), now=now)
        else:
            cr = {"content-range": f"bytes {m.snap.offset}-{SIZE - 1}/{SIZE}", "etag": '"v"'}
            m.handle(Response(206, cr), now=now)
        m.handle(DataWritten(1), now=now + 10)  # a byte every 10 s keeps the idle timer alive
        slow = TransferTimeout("slower than 100 B/s for 120 s")
        actions = m.handle(TransportFailed(slow, slow=True), now=now + 120)
        if n < MAX_SLOW_ATTEMPTS:
            (retry,) = [a for a in actions if isinstance(a, ScheduleRetry)]
            delays.append(retry.delay)
            m.handle(RetryDue(), now=now + 200)
            now += 300
    assert delays == sorted(delays)
    assert delays[-1] >= 4 * delays[0]
    assert isinstance(m.snap.error, TransferTimeout)
    assert f"{MAX_SLOW_ATTEMPTS} attempts in a row" in m.snap.error.message
    assert m.snap.offset == MAX_SLOW_ATTEMPTS  # the trickled bytes were kept meanwhile


def test_a_fast_attempt_after_a_slow_one_resets_the_count() -> None:
    m = TransferMachine(Spec(URL))
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"content-length": str(SIZE), "etag": '"v"'}), now=0.0)
    m.handle(TransportFailed(TransferTimeout("slow"), slow=True), now=1.0)
    assert m.snap.failures == 1
    m.handle(RetryDue(), now=2.0)
    m.handle(Start(), now=2.0)
    m.handle(Response(206, {"content-range": f"bytes 0-{SIZE - 1}/{SIZE}"}), now=2.0)
    m.handle(DataWritten(500), now=2.1)
    m.handle(TransportFailed(ReadError("cut")), now=2.2)  # not slow: the bytes counted
    assert m.snap.failures == 1


# -- 12: a plain upload's sent bytes do not reset the backoff ------------------------------


def upload(**spec: object) -> UploadMachine:
    base: dict[str, object] = {"kind": "upload", "method": "PUT", "source_size": SIZE}
    return UploadMachine(Spec(URL, **{**base, **spec}))  # type: ignore[arg-type]


def test_put_answered_500_backs_off_although_its_body_was_sent() -> None:
    m = upload(retry_wait=1.0, max_retry_wait=1000.0)
    delays = []
    for _ in range(5):
        m.handle(Start(), now=0.0)
        m.handle(UploadProgress(SIZE), now=0.0)  # the whole body went out
        actions = m.handle(FinalResponse(500, {}, b""), now=0.0)
        (retry,) = [a for a in actions if isinstance(a, ScheduleRetry)]
        delays.append(retry.delay)
        m.handle(RetryDue(), now=0.0)
    # rng 0.5: equal jitter keeps 3/4 of 1, 2, 4, 8, 16 s (before the fix: 0.75 s each time)
    assert delays == [0.75, 1.5, 3.0, 6.0, 12.0]


def test_tus_confirmed_bytes_still_reset_the_backoff() -> None:
    m = upload(protocol="tus")
    m.handle(Start(), now=0.0)
    m.handle(TransportFailed(ReadError("cut")), now=0.0)
    m.handle(RetryDue(), now=0.0)
    m.handle(Start(), now=0.0)
    assert m.snap.failures == 1
    m.handle(UploadProgress(100), now=0.0)  # the server confirmed 100 bytes
    assert m.snap.failures == 0


# -- 14: a POST that may have been sent is not sent again ----------------------------------


def test_post_start_is_committed_before_the_request() -> None:
    m = upload(method="POST")
    actions = m.handle(Start(), now=0.0)
    assert isinstance(actions[0], Persist)
    assert isinstance(actions[1], SendRequest)
    assert m.snap.unsafe_sent


def test_post_found_in_flight_after_a_crash_is_not_resent() -> None:
    m = upload(method="POST")
    m.handle(Start(), now=0.0)
    stored = m.snapshot(1.0)  # what the store held when the process died
    stored.phase = Phase.QUEUED  # the daemon requeues running tasks at start
    again = UploadMachine.from_snapshot(m.spec, stored)
    actions = again.handle(Start(), now=2.0)
    assert not any(isinstance(a, SendRequest) for a in actions)
    assert isinstance(again.snap.error, ReadError)
    assert "POST is not retried" in again.snap.error.message
    assert not again.snap.unsafe_sent


@pytest.mark.parametrize(
    "spec",
    [
        {"method": "POST", "headers": (("Idempotency-Key", "k1"),)},
        {"method": "POST", "retry_unsafe": True},
        {"method": "PUT"},
        {"method": "POST", "protocol": "tus"},
    ],
)
def test_requests_safe_to_repeat_carry_no_marker(spec: dict[str, object]) -> None:
    m = upload(**spec)
    actions = m.handle(Start(), now=0.0)
    assert not any(isinstance(a, Persist) for a in actions)
    assert not m.snap.unsafe_sent


def test_post_marker_is_cleared_by_an_answer_and_by_suspend() -> None:
    m = upload(method="POST")
    m.handle(Start(), now=0.0)
    m.handle(FinalResponse(201, {}, b""), now=0.0)
    assert not m.snap.unsafe_sent
    assert m.snap.error is None
    m = upload(method="POST")
    m.handle(Start(), now=0.0)
    m.handle(SuspendRequested(), now=0.0)  # the caller's own choice to send it again later
    assert not m.snap.unsafe_sent
    m = upload(method="POST")
    m.handle(Start(), now=0.0)
    m.handle(FinalResponse(503, {}, b""), now=0.0)
    assert isinstance(m.snap.error, HTTPStatusError)
    assert not m.snap.unsafe_sent
