"""Download machine rules that no other core test specified (issue 20's survivors).

Each test states what an answer or a failure must do to the task: what it learns, what it
keeps, what it forgets, when it waits and when it gives up. Errors are compared by type and
code; one test per error family pins the exact message a person reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bgtransfer._exceptions import (
    ConnectError,
    HTTPStatusError,
    IntegrityError,
    InvalidTransition,
    ReadError,
    RedirectError,
    TransferError,
    TransferTimeout,
)
from bgtransfer._models import Phase, TaskState
from bgtransfer._protocol._machine import (
    Action,
    BodyEnded,
    CancelCleaned,
    CancelRequested,
    DataWritten,
    DiscardResponse,
    Event,
    Finalize,
    Finalized,
    FinalizeFailed,
    Interrupted,
    Persist,
    RemovePartial,
    Response,
    RestartRequired,
    ResumeRequested,
    RetryDue,
    ScheduleRetry,
    SegmentsDeclined,
    SegmentsPlanned,
    SegmentSplit,
    SegmentWritten,
    SendRequest,
    Spec,
    Start,
    StopTransfer,
    SuspendRequested,
    TransferMachine,
    TransportFailed,
    WriteBody,
)
from bgtransfer._protocol._retry import RETRYABLE_STATUS

URL = "https://example.com/f.bin"
ETAG = '"v1"'
FAILED_ACTIONS = [StopTransfer(), RemovePartial(), Persist()]


def in_flight(m: TransferMachine) -> bool:
    """A request is out (or its body is being read): what the removed ``in_flight`` flag
    said, derived from the phase as the driver sees it."""
    return m.snap.phase in (Phase.CONNECTING, Phase.TRANSFERRING)


def make(**spec: object) -> TransferMachine:
    return TransferMachine(Spec(URL, **spec))  # type: ignore[arg-type]


def headers_of(actions: Sequence[Action]) -> dict[str, str]:
    (req,) = [a for a in actions if isinstance(a, SendRequest)]
    return {k.lower(): v for k, v in req.headers}


def interrupted_at(m: TransferMachine, written: int, now: float = 0.0) -> None:
    m.handle(DataWritten(written), now=now)
    m.handle(TransportFailed(ReadError("reset")), now=now)
    assert m.snap.phase is Phase.WAITING_RETRY
    m.handle(RetryDue(), now=now)


# -- what a first answer records -----------------------------------------------------------


def test_a_206_to_a_plain_request_is_recorded_as_the_200_it_stands_for() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    resp = Response(206, {"content-range": "bytes 0-999/1000", "etag": ETAG, "x-id": "7"})
    assert m.handle(resp, now=0.0) == [Persist(), WriteBody(0, truncate=True)]
    # A caller sees the status and headers of the whole file, not of a range.
    assert m.snap.response_status == 200
    assert m.snap.status_code == 206
    assert dict(m.snap.response_headers) == {"etag": ETAG, "x-id": "7"}
    assert m.snap.total == 1000


def test_a_200_is_recorded_as_it_came() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    headers = {"content-length": "10", "etag": ETAG, "content-range": "bytes 0-9/10"}
    m.handle(Response(203, headers), now=0.0)
    assert m.snap.response_status == 203
    assert "content-range" not in dict(m.snap.response_headers)
    assert m.snap.total == 10  # a 200's length is its Content-Length


@pytest.mark.parametrize(
    ("value", "total"),
    [
        ("9" * 19, int("9" * 19)),
        ("1" + "0" * 19, None),  # 20 digits: beyond any real size
        (" 42 ", 42),
        ("0", 0),
        ("\u00b2", None),
        ("-1", None),
        ("", None),
        ("4 2", None),
    ],
)
def test_the_length_a_200_announces(value: str, total: int | None) -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"content-length": value}), now=0.0)
    assert m.snap.total == total


# -- resume --------------------------------------------------------------------------------


def test_a_resume_learns_the_unknown_length_from_the_206() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": ETAG}), now=0.0)  # no length
    assert m.snap.total is None
    interrupted_at(m, 100)
    assert headers_of(m.handle(Start(), now=1.0))["range"] == "bytes=100-"
    cr = {"content-range": "bytes 100-999/1000", "etag": ETAG}
    assert m.handle(Response(206, cr), now=1.0) == [WriteBody(100, truncate=False)]
    assert m.snap.total == 1000
    assert m.snap.detail == "downloading (resumed at byte 100)"
    # Knowing the length, a body that ends early is a truncation to retry, not the file.
    m.handle(DataWritten(400), now=1.1)
    m.handle(BodyEnded(), now=1.2)
    assert m.snap.phase is Phase.WAITING_RETRY
    assert m.snap.error is None


def test_a_resume_whose_206_does_not_know_the_length_keeps_it_unknown() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": ETAG}), now=0.0)
    interrupted_at(m, 100)
    m.handle(Start(), now=1.0)
    cr = {"content-range": "bytes 100-199/*", "etag": ETAG}
    assert m.handle(Response(206, cr), now=1.0) == [WriteBody(100, truncate=False)]
    assert m.snap.total is None
    m.handle(DataWritten(100), now=1.1)
    assert m.handle(BodyEnded(), now=1.2) == [Finalize(200, None)]


def test_a_resume_keeps_a_known_length_over_the_206s() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": ETAG, "content-length": "1000"}), now=0.0)
    interrupted_at(m, 100)
    m.handle(Start(), now=1.0)
    m.handle(Response(206, {"content-range": "bytes 100-999/*", "etag": ETAG}), now=1.0)
    assert m.snap.total == 1000


# -- failures, retries and time ------------------------------------------------------------


def test_a_transport_failure_after_the_resource_time_is_used_up_is_final() -> None:
    m = make(resource_timeout=10.0)
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": ETAG, "content-length": "1000"}), now=0.0)
    actions = m.handle(TransportFailed(ReadError("reset by peer")), now=10.0)
    assert actions == FAILED_ACTIONS
    assert isinstance(m.snap.error, TransferTimeout)
    # The one exact message of the timeout family: the limit and what went wrong last.
    assert m.snap.error.message == "resource timeout of 10 s reached; last error: reset by peer"
    assert m.snap.detail == f"failed: {m.snap.error.message}"
    assert m.snap.failures == 0  # no retry was counted


def test_a_transport_failure_with_time_left_waits_within_it() -> None:
    m = make(resource_timeout=10.0)
    m.handle(Start(), now=0.0)
    actions = m.handle(TransportFailed(ReadError("reset")), now=9.0)
    assert actions == [Persist(), ScheduleRetry(0.75)]
    assert m.snap.detail == "retrying in 0.8 s after reset"


def test_a_backoff_that_would_end_past_the_resource_time_is_a_timeout() -> None:
    m = make(resource_timeout=10.0)
    m.handle(Start(), now=0.0)
    actions = m.handle(TransportFailed(ReadError("reset")), now=9.25)  # 0.75 s left
    assert actions == FAILED_ACTIONS
    assert isinstance(m.snap.error, TransferTimeout)


def test_the_wait_between_attempts_is_capped_by_max_retry_wait() -> None:
    m = make(retry_wait=1.0, max_retry_wait=5.0)
    m.rng = lambda: 1.0  # the whole delay, no jitter taken off
    delays = []
    for i in range(6):
        m.handle(Start(), now=float(i))
        (*_, wait) = m.handle(TransportFailed(ConnectError("refused")), now=float(i))
        assert isinstance(wait, ScheduleRetry)
        delays.append(wait.delay)
        m.handle(RetryDue(), now=float(i))
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_retry_wait_is_the_first_delay() -> None:
    m = make(retry_wait=3.0)
    m.rng = lambda: 0.0  # equal jitter keeps half
    m.handle(Start(), now=0.0)
    assert m.handle(TransportFailed(ConnectError("refused")), now=0.0)[-1] == ScheduleRetry(1.5)


@pytest.mark.parametrize("status", [400, 403, 404, 410, 501, 505])
def test_a_failure_reported_with_a_final_status_is_not_retried(status: int) -> None:
    m = make()
    m.handle(Start(), now=0.0)
    err = HTTPStatusError(f"server answered {status}", status_code=status)
    assert m.handle(TransportFailed(err), now=0.0) == FAILED_ACTIONS
    assert m.snap.error is err
    assert m.snap.failures == 0


@pytest.mark.parametrize("status", sorted(RETRYABLE_STATUS))
def test_a_failure_reported_with_a_transient_status_is_retried(status: int) -> None:
    m = make()
    m.handle(Start(), now=0.0)
    err = HTTPStatusError(f"server answered {status}", status_code=status)
    assert m.handle(TransportFailed(err), now=0.0)[-1] == ScheduleRetry(0.75)
    assert m.snap.detail == f"retrying in 0.8 s after {status}"


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ReadError("reset"), True),
        (ConnectError("refused"), True),
        (TransferTimeout("no progress for 60 s"), True),
        (TransferError("unexpected"), False),
        (RedirectError("loop"), False),
    ],
)
def test_which_transport_failures_are_retried(error: TransferError, retried: bool) -> None:
    m = make()
    m.handle(Start(), now=0.0)
    actions = m.handle(TransportFailed(error), now=0.0)
    assert (m.snap.phase is Phase.WAITING_RETRY) is retried
    assert (actions == FAILED_ACTIONS) is not retried
    assert (m.snap.error is error) is not retried


def test_max_attempts_message() -> None:
    m = make(max_attempts=1)
    m.handle(Start(), now=0.0)
    m.handle(TransportFailed(ReadError("reset")), now=0.0)
    assert isinstance(m.snap.error, ReadError)
    assert m.snap.error.message == "reset (gave up after 1 attempts)"
    assert str(m.snap.error) == m.snap.error.message


def test_retry_after_beyond_the_resource_time_message() -> None:
    m = make(resource_timeout=60.0)
    m.handle(Start(), now=0.0)
    m.handle(Response(503, {"retry-after": "120"}), now=0.0)
    assert isinstance(m.snap.error, HTTPStatusError)
    assert m.snap.error.message == (
        "server answered 503 with Retry-After 120 s, beyond the 60 s left of "
        "resource_timeout; not retried"
    )
    assert str(m.snap.error) == m.snap.error.message


def test_a_final_status_keeps_the_answer_and_names_the_url() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    actions = m.handle(Response(404, {"content-type": "text/plain"}), now=0.0)
    assert actions == [DiscardResponse(), *FAILED_ACTIONS]
    assert isinstance(m.snap.error, HTTPStatusError)
    assert m.snap.error.code == "http_status"
    assert m.snap.error.message == f"server answered 404 for {URL}; not retried"
    assert m.snap.response_status == 404
    assert m.snap.response_headers == (("content-type", "text/plain"),)


def test_content_changed_message() -> None:
    m = make(max_restarts=0)
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": ETAG, "content-length": "1000"}), now=0.0)
    interrupted_at(m, 100)
    m.handle(Start(), now=1.0)
    m.handle(Response(200, {"etag": '"v2"', "content-length": "1000"}), now=1.0)
    assert m.snap.error is not None
    assert m.snap.error.code == "content_changed"
    assert m.snap.error.message == (
        "resource keeps changing: restarted 0 times (the server's answers to range requests "
        "did not match the first download)"
    )


def test_too_many_redirects_message() -> None:
    m = make(max_redirects=0)
    m.handle(Start(), now=0.0)
    m.handle(Response(302, {"location": "/next"}), now=0.0)
    assert isinstance(m.snap.error, RedirectError)
    assert m.snap.error.status_code == 302
    assert m.snap.error.message == (
        "too many redirects (more than 0); last to https://example.com/next"
    )


# -- cancel --------------------------------------------------------------------------------


def test_what_a_cancel_leaves_behind() -> None:
    total = 8 << 20
    m = make(segments=2)
    m.handle(Start(), now=0.0)
    headers = {"accept-ranges": "bytes", "etag": ETAG, "content-length": str(total)}
    m.handle(Response(200, headers), now=0.0)
    m.handle(SegmentsPlanned(((0, 0, total // 2), (total // 2, total // 2, total))), now=0.0)
    m.handle(SegmentWritten(1, 3 << 20), now=0.1)
    assert m.committed > 0
    actions = m.handle(CancelRequested(), now=0.2)
    # Stop first, persist the cancel, then remove the file: a crash in between leaves a
    # task that is canceling, never one that resumes into a deleted file.
    assert actions == [StopTransfer(), Persist(), RemovePartial()]
    snap = m.snapshot(0.2)
    assert (snap.offset, snap.segments, snap.phase) == (0, (), Phase.CANCELING)
    assert m.snap.offset == m.committed == 0
    assert m.state is TaskState.CANCELING
    assert not in_flight(m)
    assert m.snap.error is None
    assert m.handle(CancelRequested(), now=0.3) == []
    assert m.handle(CancelCleaned(), now=0.4) == [Persist()]
    assert m.state is TaskState.COMPLETED
    assert m.snap.error is not None
    assert m.snap.error.code == "cancelled"
    assert m.snap.error.message == "the task was cancelled"
    with pytest.raises(InvalidTransition):
        m.handle(CancelRequested(), now=0.5)


def test_a_completed_task_cannot_be_cancelled_and_says_so() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(404, {}), now=0.0)
    with pytest.raises(InvalidTransition) as exc:
        m.handle(CancelRequested(), now=0.1)
    assert exc.value.message == "cannot cancel a task that is completed"
    assert exc.value.code == "invalid_transition"


def test_a_wrong_event_names_itself_and_the_phase() -> None:
    m = make()
    with pytest.raises(InvalidTransition) as exc:
        m.handle(BodyEnded(), now=0.0)
    assert exc.value.message == "BodyEnded is not allowed while the task is queued"
    m.handle(Start(), now=0.0)
    with pytest.raises(InvalidTransition) as exc:
        m.handle(RetryDue(), now=0.0)
    assert exc.value.message == "RetryDue is not allowed while the task is connecting"


# -- restarts, segments, snapshots ---------------------------------------------------------


def test_a_restart_forgets_the_old_version_entirely() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    lm = "Sun, 06 Nov 1994 08:49:37 GMT"
    m.handle(Response(200, {"etag": ETAG, "last-modified": lm, "content-length": "1000"}), now=0)
    interrupted_at(m, 100)
    m.handle(Start(), now=1.0)
    actions = m.handle(Response(206, {"content-range": "bytes 5-999/1000"}), now=1.0)
    assert [type(a) for a in actions] == [DiscardResponse, Persist, SendRequest]
    assert (m.snap.etag, m.snap.last_modified, m.snap.total) == (None, None, None)
    assert m.snap.detail == "restarting from 0: the server's answer did not match"
    assert "if-range" not in headers_of(actions)


def running_segments(n: int = 4, total: int = 16 << 20) -> TransferMachine:
    m = make(segments=n)
    m.handle(Start(), now=0.0)
    headers = {"accept-ranges": "bytes", "etag": ETAG, "content-length": str(total)}
    m.handle(Response(200, headers), now=0.0)
    size = total // n
    m.handle(SegmentsPlanned(tuple((i * size, i * size, (i + 1) * size) for i in range(n))), now=0)
    return m


def test_progress_of_a_segment_that_does_not_exist_is_refused_by_name() -> None:
    m = running_segments(4)
    for index in (4, -1):
        with pytest.raises(InvalidTransition) as exc:
            m.handle(SegmentWritten(index, 1), now=0.1)
        assert exc.value.message == f"no segment {index} (there are 4)"
    with pytest.raises(InvalidTransition) as exc:
        m.handle(SegmentWritten(3, (4 << 20) + 1), now=0.1)
    assert exc.value.message == f"segment 3 would grow past its end {16 << 20}"
    m.handle(SegmentWritten(3, 4 << 20), now=0.1)  # exactly to its end is fine
    assert m.snap.segments[3][1] == 16 << 20


def test_segment_progress_outside_a_transfer_is_refused_by_name() -> None:
    m = make(segments=2)
    m.handle(Start(), now=0.0)
    with pytest.raises(InvalidTransition) as exc:
        m.handle(SegmentWritten(0, 1), now=0.0)
    assert exc.value.message == "SegmentWritten is not allowed while the task is connecting"


def test_a_machine_rebuilt_from_a_snapshot_draws_jitter_from_the_given_source() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    snap = m.snapshot(0.0)
    rebuilt = TransferMachine.from_snapshot(m.spec, snap, rng=lambda: 0.0)
    rebuilt.handle(Response(200, {"etag": ETAG}), now=0.0)
    assert rebuilt.handle(TransportFailed(ReadError("reset")), now=0.0)[-1] == ScheduleRetry(0.5)
    default = TransferMachine.from_snapshot(m.spec, snap)
    default.handle(Response(200, {"etag": ETAG}), now=0.0)
    assert default.handle(TransportFailed(ReadError("reset")), now=0.0)[-1] == ScheduleRetry(0.75)


# -- what a person reads, and the clock of the resource timeout ----------------------------


def test_the_detail_at_each_step_of_a_life() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": ETAG, "content-length": "100"}), now=0.0)
    assert m.handle(SuspendRequested(), now=1.0) == [StopTransfer(), Persist()]
    assert (m.snap.detail, in_flight(m)) == ("suspended", False)
    m.handle(ResumeRequested(), now=2.0)
    assert m.snap.detail == "queued"
    m.handle(Start(), now=2.0)
    m.handle(Response(200, {"etag": ETAG, "content-length": "100"}), now=2.0)
    m.handle(DataWritten(100), now=2.1)
    assert m.handle(BodyEnded(), now=2.2) == [Finalize(100, None)]
    assert (m.snap.detail, in_flight(m)) == ("verifying", False)
    other = make()
    other.handle(Start(), now=0.0)
    other.handle(CancelRequested(), now=0.1)
    assert (other.snap.detail, in_flight(other)) == ("canceling", False)
    failed = make()
    failed.handle(Start(), now=0.0)
    failed.handle(Response(404, {}), now=0.0)
    assert in_flight(failed) is False


def test_a_body_longer_than_announced_is_finalized_against_the_announced_length() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"content-length": "1000"}), now=0.0)
    m.handle(DataWritten(1001), now=0.1)
    # The finalizer compares the file with this length, so the extra byte is caught there.
    assert m.handle(BodyEnded(), now=0.2) == [Finalize(1000, None)]


def test_a_truncated_body_says_where_it_stopped() -> None:
    m = make(max_attempts=1)
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"content-length": "1000"}), now=0.0)
    m.handle(DataWritten(400), now=0.1)
    m.handle(BodyEnded(), now=0.2)
    assert isinstance(m.snap.error, ReadError)
    assert m.snap.error.message == (
        "connection closed after byte 400 of 1000 (truncated body) (gave up after 1 attempts)"
    )


def test_resource_time_runs_from_resume_and_through_a_cancel() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(SuspendRequested(), now=1.0)
    assert m.elapsed(50.0) == 1.0  # suspended time is not counted
    m.handle(ResumeRequested(), now=10.0)
    assert m.elapsed(12.0) == 3.0  # queued again: counted from the resume
    m.handle(SuspendRequested(), now=12.0)
    m.handle(CancelRequested(), now=20.0)
    m.handle(CancelCleaned(), now=21.0)
    assert m.snapshot(30.0).active_seconds == 4.0  # canceling took one more second


def test_suspend_and_resume_refusals_say_why() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(CancelRequested(), now=0.0)
    with pytest.raises(InvalidTransition) as exc:
        m.handle(SuspendRequested(), now=0.0)
    assert exc.value.message == "cannot suspend a task that is canceling"
    with pytest.raises(InvalidTransition) as exc:
        m.handle(ResumeRequested(), now=0.0)
    assert exc.value.message == "cannot resume a task that is canceling"


# -- every event in the wrong phase, and the details of the remaining steps ----------------


@pytest.mark.parametrize(
    "event",
    [
        Response(200, {}),
        DataWritten(1),
        SegmentWritten(0, 1),
        SegmentsPlanned(((0, 0, 1),)),
        SegmentsDeclined("no ranges"),
        SegmentSplit(((0, 0, 1),)),
        RestartRequired("changed"),
        BodyEnded(),
        TransportFailed(ReadError("reset")),
        RetryDue(),
        Finalized(),
        FinalizeFailed(IntegrityError("sha256 mismatch")),
        CancelCleaned(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_event_out_of_its_phase_is_refused_by_name(event: Event) -> None:
    m = make()
    with pytest.raises(InvalidTransition) as exc:
        m.handle(event, now=0.0)
    assert exc.value.message == f"{type(event).__name__} is not allowed while the task is queued"
    assert m.snap.phase is Phase.QUEUED
    m.handle(Start(), now=0.0)
    with pytest.raises(InvalidTransition) as exc:
        m.handle(Start(), now=0.0)
    assert exc.value.message == "Start is not allowed while the task is connecting"


def test_the_details_of_a_download_with_a_retry() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    assert m.snap.detail == "connecting"
    m.handle(Response(200, {"etag": ETAG, "content-length": "100"}), now=0.0)
    assert m.snap.detail == "downloading"
    m.handle(DataWritten(1), now=0.1)
    m.handle(TransportFailed(ReadError("reset")), now=0.2)
    m.handle(RetryDue(), now=1.0)
    assert m.snap.detail == "queued (retry due)"
    m.handle(Start(), now=1.0)
    assert m.snap.detail == "resuming from byte 1"
    m.handle(Response(206, {"content-range": "bytes 1-99/100", "etag": ETAG}), now=1.0)
    m.handle(DataWritten(99), now=1.1)
    m.handle(BodyEnded(), now=1.2)
    assert m.handle(Finalized(), now=1.3) == [Persist()]
    assert (m.snap.detail, in_flight(m)) == ("completed", False)


def test_a_segmented_download_declined_stays_on_one_connection_and_says_why() -> None:
    m = make(segments=4)
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"content-length": "100"}), now=0.0)
    assert m.handle(SegmentsDeclined("the server does not accept ranges"), now=0.0) == []
    assert m.snap.phase is Phase.TRANSFERRING
    assert m.snap.detail == "downloading (one connection: the server does not accept ranges)"
    assert m.snap.segments == ()


def test_a_restart_required_by_a_segment_says_why() -> None:
    m = running_segments(2)
    actions = m.handle(RestartRequired("segment 1: the resource changed"), now=0.1)
    assert [type(a) for a in actions] == [Persist, SendRequest]
    assert m.snap.detail == "restarting from 0: segment 1: the resource changed"
    assert in_flight(m) is True


def test_a_416_at_the_end_verifies_without_a_request_in_flight() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": ETAG}), now=0.0)
    interrupted_at(m, 1000)
    m.handle(Start(), now=1.0)
    actions = m.handle(Response(416, {"content-range": "bytes */1000"}), now=1.0)
    assert actions == [DiscardResponse(), Finalize(1000, None)]
    assert (m.snap.phase, m.snap.detail, in_flight(m)) == (Phase.VERIFYING, "verifying", False)


def test_a_finalize_failure_ends_with_nothing_in_flight() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"content-length": "1"}), now=0.0)
    m.handle(DataWritten(1), now=0.0)
    m.handle(BodyEnded(), now=0.0)
    assert m.handle(FinalizeFailed(IntegrityError("sha256 mismatch")), now=0.1) == FAILED_ACTIONS
    assert in_flight(m) is False
    assert m.snap.error is not None
    assert m.snap.error.code == "integrity_error"


def test_an_interrupted_transfer_is_suspended_with_nothing_in_flight() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"content-length": "10"}), now=0.0)
    assert m.handle(Interrupted("the process running it exited"), now=0.1) == [Persist()]
    assert in_flight(m) is False
    assert m.snap.detail == "the process running it exited"


def test_only_written_bytes_reset_the_backoff() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": ETAG, "content-length": "100"}), now=0.0)
    m.handle(TransportFailed(ReadError("reset")), now=0.1)
    m.handle(RetryDue(), now=1.0)
    m.handle(Start(), now=1.0)
    m.handle(Response(200, {"etag": ETAG, "content-length": "100"}), now=1.0)
    assert m.snap.failures == 1
    m.handle(DataWritten(0), now=1.1)
    assert m.snap.failures == 1
    m.handle(DataWritten(1), now=1.2)
    assert m.snap.failures == 0


def test_a_resume_from_byte_one_asks_for_byte_one() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": ETAG, "content-length": "100"}), now=0.0)
    interrupted_at(m, 1)
    hdrs = headers_of(m.handle(Start(), now=1.0))
    assert (hdrs["range"], hdrs["if-range"]) == ("bytes=1-", ETAG)
    # A 200 instead is a new version: that is a restart, counted.
    m.handle(Response(200, {"etag": '"v2"', "content-length": "100"}), now=1.0)
    assert m.snap.restarts == 1


def test_a_206_of_another_length_is_another_file() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": ETAG, "content-length": "1000"}), now=0.0)
    interrupted_at(m, 100)
    m.handle(Start(), now=1.0)
    cr = {"content-range": "bytes 100-1999/2000", "etag": ETAG}
    actions = m.handle(Response(206, cr), now=1.0)
    assert [type(a) for a in actions] == [DiscardResponse, Persist, SendRequest]
    assert m.snap.restarts == 1


def test_a_200s_length_is_its_content_length_even_with_a_content_range() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"content-length": "10", "content-range": "bytes 0-9/20"}), now=0.0)
    assert m.snap.total == 10


@pytest.mark.parametrize(("left", "starts"), [(0.0, False), (0.5, True)])
def test_an_attempt_starts_while_any_resource_time_is_left(left: float, starts: bool) -> None:
    m = make(resource_timeout=10.0)
    m.handle(Start(), now=0.0)
    m.handle(TransportFailed(ConnectError("refused")), now=5.0)
    m.handle(RetryDue(), now=10.0 - left)
    actions = m.handle(Start(), now=10.0 - left)
    assert (actions == FAILED_ACTIONS) is not starts
    if starts:
        (req,) = actions
        assert isinstance(req, SendRequest)
        assert req.time_left == pytest.approx(left)


def test_a_backoff_past_the_resource_time_names_the_last_error() -> None:
    m = make(resource_timeout=10.0)
    m.handle(Start(), now=0.0)
    err = HTTPStatusError("server answered 503", status_code=503)
    m.handle(TransportFailed(err), now=9.5)  # backoff 0.75 s, 0.5 s left; no Retry-After
    assert isinstance(m.snap.error, TransferTimeout)
    assert m.snap.error.message == (
        "resource timeout of 10 s reached; last error: server answered 503"
    )


def test_a_retry_after_beyond_less_than_a_second_left_says_zero() -> None:
    m = make(resource_timeout=10.0)
    m.handle(Start(), now=0.0)
    m.handle(Response(503, {"retry-after": "5"}), now=9.6)
    assert m.snap.error is not None
    assert m.snap.error.message == (
        "server answered 503 with Retry-After 5 s, beyond the 0 s left of "
        "resource_timeout; not retried"
    )


# -- the edges of how an answer is classified ----------------------------------------------


def test_a_416_when_only_the_last_byte_was_missing_and_the_file_is_one_byte() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": ETAG}), now=0.0)
    interrupted_at(m, 1)
    m.handle(Start(), now=1.0)
    actions = m.handle(Response(416, {"content-range": "bytes */1"}), now=1.0)
    assert actions == [DiscardResponse(), Finalize(1, None)]


def test_a_200_to_a_fresh_request_is_the_whole_file_whatever_its_content_range() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    headers = {"content-length": "10", "content-range": "bytes 5-9/10"}
    assert m.handle(Response(200, headers), now=0.0) == [Persist(), WriteBody(0, truncate=True)]


def test_a_200_with_the_asked_content_range_from_byte_one_is_appended() -> None:
    # Some servers answer a range request with 200 and a correct Content-Range.
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": ETAG, "content-length": "100"}), now=0.0)
    interrupted_at(m, 1)
    m.handle(Start(), now=1.0)
    cr = {"content-range": "bytes 1-99/100", "etag": ETAG}
    assert m.handle(Response(200, cr), now=1.0) == [WriteBody(1, truncate=False)]
    assert m.snap.restarts == 0


@pytest.mark.parametrize("status", [199, 300, 304])
def test_a_status_outside_2xx_that_is_no_redirect_fails(status: int) -> None:
    m = make()
    m.handle(Start(), now=0.0)
    assert m.handle(Response(status, {}), now=0.0) == [DiscardResponse(), *FAILED_ACTIONS]
    assert isinstance(m.snap.error, HTTPStatusError)
    assert m.snap.error.status_code == status


# -- a short body (a Content-Length larger than the body) ----------------------------------


def test_a_short_body_is_found_even_after_a_single_byte() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": ETAG, "content-length": "10"}), now=0.0)
    interrupted_at(m, 1)
    m.handle(Start(), now=1.0)
    actions = m.handle(Response(416, {"content-range": "bytes */1"}), now=1.0)
    assert actions == [DiscardResponse(), *FAILED_ACTIONS]
    assert isinstance(m.snap.error, IntegrityError)
    assert m.snap.error.message == (
        "short body: the server sent 1 bytes, its Content-Length said 10, "
        "and it answers a request for the rest with 416 (it has only 1)"
    )


def test_only_a_416_proves_a_short_body_a_206_of_a_shorter_file_is_another_version() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"etag": ETAG, "content-length": "10"}), now=0.0)
    interrupted_at(m, 5)
    m.handle(Start(), now=1.0)
    actions = m.handle(Response(206, {"content-range": "bytes 1-4/5"}), now=1.0)
    assert [type(a) for a in actions] == [DiscardResponse, Persist, SendRequest]
    assert m.snap.restarts == 1
    assert m.snap.error is None
