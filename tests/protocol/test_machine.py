"""TransferMachine driven by explicit events and explicit clock values (no I/O, no sleeping)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bgtransfer._exceptions import (
    Cancelled,
    ConnectError,
    ContentChanged,
    HTTPStatusError,
    IntegrityError,
    InvalidTransition,
    ReadError,
    RedirectError,
    ResumeError,
    TransferError,
    TransferTimeout,
)
from bgtransfer._models import PHASE_STATE, Phase, TaskState
from bgtransfer._protocol._machine import (
    STREAM_CHECKPOINT_BYTES,
    Action,
    BodyEnded,
    CancelCleaned,
    CancelRequested,
    DataWritten,
    Detached,
    DiscardResponse,
    Enqueue,
    Event,
    Failed,
    Finalize,
    Finalized,
    FinalizeFailed,
    Interrupted,
    Persist,
    Recovered,
    RemovePartial,
    Response,
    ResumeRequested,
    RetryDue,
    ScheduleRetry,
    Sealed,
    SegmentWritten,
    SendRequest,
    Snapshot,
    Spec,
    Start,
    StopTransfer,
    SuspendRequested,
    TransferMachine,
    TransportFailed,
    TruncatePartial,
    WriteBody,
)
from bgtransfer._protocol._recovery import DiskFacts, needs_disk, recover
from bgtransfer._protocol._redirects import origin
from bgtransfer._protocol._transitions import TRANSITIONS

URL = "https://example.com/files/big.bin"
ETAG = '"v1"'
LAST_MODIFIED = "Sun, 06 Nov 1994 08:49:37 GMT"
DATE_LATER = "Sun, 06 Nov 1994 08:49:38 GMT"  # one second on: LAST_MODIFIED is strong
SHA = "ab" * 32
MIB = 1 << 20
SIZE = 5 * STREAM_CHECKPOINT_BYTES
BOOT = "boot-1"


def in_flight(m: TransferMachine) -> bool:
    """A request is out (or its body is being read): what the removed ``in_flight`` flag
    said, derived from the phase as the driver sees it."""
    return m.snap.phase in (Phase.CONNECTING, Phase.TRANSFERRING)


def make(rng: Callable[[], float] | None = None, **spec: object) -> TransferMachine:
    m = TransferMachine(Spec(URL, **spec))  # type: ignore[arg-type]
    if rng is not None:
        m.rng = rng
    return m


def request_of(actions: Sequence[Action]) -> SendRequest:
    sends = [a for a in actions if isinstance(a, SendRequest)]
    assert len(sends) == 1, actions
    return sends[0]


def headers_of(actions: Sequence[Action]) -> dict[str, str]:
    req = request_of(actions)
    names = [k.lower() for k, _ in req.headers]
    assert len(names) == len(set(names)), f"duplicate header in {req.headers}"
    return {k.lower(): v for k, v in req.headers}


def ok(headers: Mapping[str, str] | None = None, status: int = 200) -> Response:
    base = {"etag": ETAG, "content-length": str(SIZE)}
    return Response(status, {**base, **(headers or {})})


def to_transferring(m: TransferMachine, now: float = 0.0, resp: Response | None = None) -> None:
    m.handle(Start(), now=now)
    m.handle(resp or ok(), now=now)
    assert m.snap.phase is Phase.TRANSFERRING


def to_waiting_retry(m: TransferMachine, written: int, now: float = 0.0) -> list[Action]:
    """A first attempt that writes ``written`` bytes of SIZE, then the connection drops."""
    to_transferring(m, now)
    m.handle(DataWritten(written), now=now)
    actions = m.handle(BodyEnded(), now=now)
    assert m.snap.phase is Phase.WAITING_RETRY
    return actions


def resume_request(m: TransferMachine, now: float = 0.0) -> list[Action]:
    assert m.handle(RetryDue(), now=now) == [Enqueue()]
    assert m.snap.phase is Phase.QUEUED
    return m.handle(Start(), now=now)


def kinds(actions: Sequence[Action]) -> list[type]:
    return [type(a) for a in actions]


def assert_failed(m: TransferMachine, actions: Sequence[Action], cls: type[TransferError]) -> None:
    assert m.state is TaskState.COMPLETED
    assert m.snap.phase is Phase.DONE
    assert isinstance(m.snap.error, cls), m.snap.error
    assert StopTransfer() in actions
    assert actions[-1] == Persist()
    assert not any(isinstance(a, ScheduleRetry | SendRequest | WriteBody) for a in actions)
    assert not in_flight(m)


# -- a clean download -----------------------------------------------------------------------


def test_clean_download() -> None:
    m = make(sha256=SHA)
    assert m.state is TaskState.RUNNING
    assert m.snap.phase is Phase.QUEUED

    actions = m.handle(Start(), now=0.0)
    req = request_of(actions)
    assert actions == [req]
    assert req.url == URL
    assert req.time_left == pytest.approx(7 * 86400.0)
    hdrs = headers_of(actions)
    assert hdrs["accept-encoding"] == "identity"
    assert "range" not in hdrs
    assert "if-range" not in hdrs
    assert m.snap.phase is Phase.CONNECTING
    assert m.snap.attempts == 1
    assert in_flight(m)

    actions = m.handle(ok(), now=0.1)
    assert actions == [Persist(), WriteBody(0, truncate=True)]
    assert m.snap.phase is Phase.TRANSFERRING
    assert m.snap.total == SIZE
    assert m.snap.etag == ETAG
    assert m.snap.status_code == 200
    assert m.committed == 0

    # Checkpoints only every STREAM_CHECKPOINT_BYTES or every second.
    step = STREAM_CHECKPOINT_BYTES // 4
    assert m.handle(DataWritten(step), now=0.2) == []
    assert m.handle(DataWritten(step), now=0.3) == []
    assert m.handle(DataWritten(step), now=0.4) == []
    assert m.committed == 0
    assert m.snapshot(0.4).offset == 0  # the store only ever sees committed bytes
    assert m.handle(DataWritten(step), now=0.5) == [
        Persist()
    ]  # STREAM_CHECKPOINT_BYTES since the last
    assert m.committed == STREAM_CHECKPOINT_BYTES
    assert m.handle(DataWritten(step), now=0.6) == []
    assert m.handle(DataWritten(1), now=1.49) == []
    assert m.handle(DataWritten(step - 1), now=1.5) == [Persist()]  # 1 s since the last one
    assert m.committed == STREAM_CHECKPOINT_BYTES + 2 * step
    assert m.handle(DataWritten(0), now=1.6) == []
    rest = SIZE - m.snap.offset - 4 * MIB
    m.handle(DataWritten(rest), now=1.65)
    for i in range(4):
        m.handle(DataWritten(MIB), now=1.7 + i * 0.01)
    assert m.snap.offset == SIZE
    assert m.committed <= m.snap.offset

    actions = m.handle(BodyEnded(), now=2.0)
    assert actions == [Finalize(SIZE, SHA)]
    assert m.snap.phase is Phase.VERIFYING
    assert not in_flight(m)

    assert m.handle(Finalized(), now=2.1) == [Persist()]
    assert m.state is TaskState.COMPLETED
    assert m.snap.phase is Phase.DONE
    assert m.snap.error is None
    assert m.snap.detail == "completed"
    assert m.committed == m.snap.offset == SIZE
    assert m.snapshot(2.1).offset == SIZE
    assert m.snapshot(2.1).active_seconds == pytest.approx(2.1)
    assert m.snap.restarts == 0
    assert m.snap.failures == 0


def test_checkpoint_interval_counts_from_the_transfer_start_not_clock_zero() -> None:
    # ``now`` is a monotonic clock with an arbitrary origin. The Response already persisted a
    # checkpoint at t=1000; 1 KiB written 0.1 s later is neither 4 MiB nor 1 s after it.
    m = make()
    m.handle(Start(), now=1000.0)
    assert m.handle(ok(), now=1000.0) == [Persist(), WriteBody(0, truncate=True)]
    assert m.handle(DataWritten(1024), now=1000.1) == []


def test_body_without_length_finalizes_what_was_received() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {}), now=0.0)
    assert m.snap.total is None
    m.handle(DataWritten(1234), now=0.0)
    assert m.handle(BodyEnded(), now=0.0) == [Finalize(1234, None)]


def test_206_full_body_on_a_fresh_request_is_a_fresh_download() -> None:
    # Some servers answer 206 with the whole representation even without Range. The
    # download must still start a fresh file and keep the validator for later resumes.
    m = make()
    m.handle(Start(), now=0.0)
    resp = Response(206, {"content-range": "bytes 0-999/1000", "etag": ETAG})
    first = m.handle(resp, now=0.0)
    assert m.snap.total == 1000
    m.handle(DataWritten(400), now=0.0)
    m.handle(BodyEnded(), now=0.0)
    hdrs = headers_of(resume_request(m))
    assert hdrs["range"] == "bytes=400-"
    assert hdrs.get("if-range") == ETAG  # without it a changed file is silently spliced
    assert m.snap.etag == ETAG
    assert first == [Persist(), WriteBody(0, truncate=True)]


@pytest.mark.parametrize(
    "length",
    [
        pytest.param("\u00b2", id="superscript-two"),
        pytest.param("\u0663", id="arabic-indic-three"),
        pytest.param("9" * 5000, id="5000-digits"),
        "-1",
        "1e3",
        " 12 ",
        "",
    ],
)
def test_odd_content_length_does_not_crash_the_machine(length: str) -> None:
    # Server-controlled. str.isdigit() is true for "\u00b2" (superscript two) but int()
    # rejects it, and more than 4300 digits exceed int()'s limit: neither may escape handle().
    m = make()
    m.handle(Start(), now=0.0)
    actions = m.handle(Response(200, {"content-length": length}), now=0.0)
    assert actions == [Persist(), WriteBody(0, truncate=True)]
    assert m.snap.total is None or m.snap.total >= 0


def test_finalize_failed_completes_with_the_error() -> None:
    m = make(sha256=SHA)
    to_transferring(m)
    m.handle(DataWritten(SIZE), now=0.0)
    m.handle(BodyEnded(), now=0.0)
    actions = m.handle(FinalizeFailed(IntegrityError("sha256 mismatch")), now=0.0)
    assert_failed(m, actions, IntegrityError)


# -- resume -------------------------------------------------------------------------------


def test_truncated_body_waits_then_resumes_with_range_and_if_range() -> None:
    m = make()
    actions = to_waiting_retry(m, 400, now=0.0)
    assert actions == [Persist(), ScheduleRetry(0.75)]  # rng 0.5 -> 1 s * 0.75
    assert m.state is TaskState.RUNNING
    assert m.snap.error is None
    assert m.snap.failures == 1
    assert m.committed == 400
    assert "retrying" in m.snap.detail
    assert not in_flight(m)

    actions = resume_request(m, now=1.0)
    hdrs = headers_of(actions)
    assert hdrs["range"] == "bytes=400-"
    assert hdrs["if-range"] == ETAG
    assert hdrs["accept-encoding"] == "identity"
    assert m.snap.attempts == 2
    assert "400" in m.snap.detail

    cr = f"bytes 400-{SIZE - 1}/{SIZE}"
    actions = m.handle(Response(206, {"content-range": cr}), now=1.1)
    assert actions == [WriteBody(400, truncate=False)]
    assert m.snap.offset == 400
    assert m.snap.restarts == 0
    m.handle(DataWritten(SIZE - 400), now=1.2)
    assert m.snap.failures == 0
    assert m.handle(BodyEnded(), now=1.3) == [Finalize(SIZE, None)]
    m.handle(Finalized(), now=1.4)
    assert m.snap.error is None


def test_resume_with_weak_etag_sends_no_date_in_if_range() -> None:
    # RFC 9110 13.1.5: a date only when the client has no entity tag at all (issue 11).
    m = make()
    resp = ok({"etag": 'W/"weak"', "last-modified": LAST_MODIFIED, "date": DATE_LATER})
    to_transferring(m, resp=resp)
    m.handle(DataWritten(100), now=0.0)
    m.handle(BodyEnded(), now=0.0)
    hdrs = headers_of(resume_request(m))
    assert hdrs["range"] == "bytes=100-"
    assert "if-range" not in hdrs


def test_resume_without_validators_sends_no_if_range() -> None:
    m = make()
    to_transferring(m, resp=Response(200, {"content-length": "1000"}))
    m.handle(DataWritten(100), now=0.0)
    m.handle(BodyEnded(), now=0.0)
    hdrs = headers_of(resume_request(m))
    assert hdrs["range"] == "bytes=100-"
    assert "if-range" not in hdrs


def test_resume_answered_with_200_restarts_from_zero() -> None:
    m = make()
    to_waiting_retry(m, 400)
    resume_request(m)
    actions = m.handle(ok({"etag": '"v2"'}), now=0.0)
    assert actions == [Persist(), WriteBody(0, truncate=True)]
    assert m.snap.restarts == 1
    assert m.snap.offset == 0
    assert m.committed == 0
    assert m.snap.etag == '"v2"'


def test_resume_answered_with_wrong_range_restarts_without_range() -> None:
    m = make()
    to_waiting_retry(m, 400)
    resume_request(m)
    actions = m.handle(Response(206, {"content-range": f"bytes 300-{SIZE - 1}/{SIZE}"}), now=0.0)
    assert kinds(actions) == [DiscardResponse, Persist, SendRequest]
    hdrs = headers_of(actions)
    assert "range" not in hdrs
    assert "if-range" not in hdrs
    assert request_of(actions).url == URL
    assert m.snap.phase is Phase.CONNECTING
    assert m.snap.restarts == 1
    assert m.snap.offset == m.committed == 0
    assert m.snap.etag is None
    assert m.snap.total is None
    assert in_flight(m)


def test_416_at_the_full_length_finalizes() -> None:
    m = make(sha256=SHA)
    to_transferring(m, resp=Response(200, {}))
    m.handle(DataWritten(1000), now=0.0)
    m.handle(TransportFailed(ReadError("reset")), now=0.0)
    assert m.snap.phase is Phase.WAITING_RETRY
    assert headers_of(resume_request(m))["range"] == "bytes=1000-"
    actions = m.handle(Response(416, {"content-range": "bytes */1000"}), now=0.0)
    assert actions == [DiscardResponse(), Finalize(1000, SHA)]
    assert m.snap.phase is Phase.VERIFYING
    m.handle(Finalized(), now=0.0)
    assert m.state is TaskState.COMPLETED
    assert m.snap.error is None
    assert m.snap.offset == 1000


def test_etag_changing_on_every_resume_gives_up_with_content_changed() -> None:
    m = make(max_restarts=5)
    to_waiting_retry(m, 100)
    for i in range(1, 6):
        resume_request(m, now=float(i))
        actions = m.handle(ok({"etag": f'"v{i + 1}"'}), now=float(i))
        assert actions == [Persist(), WriteBody(0, truncate=True)]
        assert m.snap.restarts == i
        m.handle(DataWritten(100), now=float(i))
        m.handle(BodyEnded(), now=float(i))
        assert m.snap.phase is Phase.WAITING_RETRY
    resume_request(m, now=10.0)
    actions = m.handle(ok({"etag": '"v7"'}), now=10.0)
    assert actions[0] == DiscardResponse()
    assert_failed(m, actions, ContentChanged)
    assert isinstance(m.snap.error, ResumeError)
    assert m.snap.error.code == "content_changed"  # the message: test_machine_rules.py


# -- retries and status codes ---------------------------------------------------------------


def test_503_with_retry_after_schedules_that_delay() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    actions = m.handle(Response(503, {"retry-after": "7"}), now=0.0)
    assert actions == [DiscardResponse(), Persist(), ScheduleRetry(7.0)]
    assert m.snap.phase is Phase.WAITING_RETRY
    assert m.snap.status_code == 503
    assert m.snap.error is None
    assert "503" in m.snap.detail


def test_retry_after_http_date_uses_the_response_wall_time() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    resp = Response(429, {"retry-after": LAST_MODIFIED}, wall_time=784111777.0 - 12.0)
    assert m.handle(resp, now=0.0)[-1] == ScheduleRetry(pytest.approx(12.0))  # type: ignore[arg-type]


def test_unparsable_retry_after_falls_back_to_backoff() -> None:
    m = make(rng=lambda: 0.0)
    m.handle(Start(), now=0.0)
    actions = m.handle(Response(503, {"retry-after": "1m0s"}), now=0.0)
    assert actions[-1] == ScheduleRetry(0.5)


def test_retry_after_beyond_resource_time_is_not_retried() -> None:
    # curl test 366: a Retry-After longer than the time left ends the transfer at once.
    m = make(resource_timeout=60.0)
    m.handle(Start(), now=0.0)
    actions = m.handle(Response(503, {"retry-after": "120"}), now=0.0)
    assert actions[0] == DiscardResponse()
    assert_failed(m, actions, HTTPStatusError)
    assert m.snap.error is not None
    assert m.snap.error.status_code == 503
    assert m.snap.error.code == "http_status"


@pytest.mark.parametrize("status", [404, 403, 410, 401, 400])
def test_final_status_fails_without_retry(status: int) -> None:
    m = make()
    m.handle(Start(), now=0.0)
    actions = m.handle(Response(status, {}), now=0.0)
    assert actions[0] == DiscardResponse()
    assert_failed(m, actions, HTTPStatusError)
    assert m.snap.error is not None
    assert m.snap.error.status_code == status
    assert m.snap.failures == 0
    assert m.snap.attempts == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_status_is_retried_with_backoff(status: int) -> None:
    m = make(rng=lambda: 0.0)
    delays = []
    for i in range(4):
        m.handle(Start(), now=float(i))
        actions = m.handle(Response(status, {}), now=float(i))
        assert isinstance(actions[-1], ScheduleRetry)
        delays.append(actions[-1].delay)
        m.handle(RetryDue(), now=float(i))
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert m.snap.failures == 4


def test_data_resets_the_failure_count() -> None:
    m = make(rng=lambda: 0.0)
    m.handle(Start(), now=0.0)
    m.handle(TransportFailed(ConnectError("refused")), now=0.0)
    m.handle(RetryDue(), now=0.0)
    m.handle(Start(), now=0.0)
    assert m.handle(TransportFailed(ConnectError("refused")), now=0.0)[-1] == ScheduleRetry(1.0)
    assert m.snap.failures == 2
    m.handle(RetryDue(), now=0.0)
    m.handle(Start(), now=0.0)
    m.handle(ok(), now=0.0)
    m.handle(DataWritten(10), now=0.0)
    assert m.snap.failures == 0
    assert m.handle(BodyEnded(), now=0.0)[-1] == ScheduleRetry(0.5)


def test_max_attempts() -> None:
    m = make(max_attempts=3)
    for i in range(2):
        m.handle(Start(), now=float(i))
        actions = m.handle(TransportFailed(ConnectError("connection refused")), now=float(i))
        assert isinstance(actions[-1], ScheduleRetry)
        m.handle(RetryDue(), now=float(i))
    m.handle(Start(), now=5.0)
    actions = m.handle(TransportFailed(ConnectError("connection refused")), now=5.0)
    assert_failed(m, actions, ConnectError)
    assert m.snap.attempts == 3
    assert m.snap.error is not None
    assert m.snap.error.code == "connect_error"


def test_non_retryable_transport_error_fails_at_once() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    actions = m.handle(TransportFailed(TransferError("bad TLS certificate")), now=0.0)
    assert_failed(m, actions, TransferError)
    assert m.snap.failures == 0


def test_resource_timeout_reached_while_waiting_fails_at_start() -> None:
    m = make(resource_timeout=10.0)
    m.handle(Start(), now=0.0)
    assert m.handle(TransportFailed(ConnectError("refused")), now=9.0)[-1] == ScheduleRetry(0.75)
    m.handle(RetryDue(), now=9.75)
    actions = m.handle(Start(), now=10.5)
    assert_failed(m, actions, TransferTimeout)
    assert isinstance(m.snap.error, TimeoutError)


def test_backoff_beyond_resource_time_fails_with_timeout() -> None:
    m = make(resource_timeout=10.0)
    m.handle(Start(), now=0.0)
    actions = m.handle(TransportFailed(ConnectError("refused")), now=9.5)
    assert_failed(m, actions, TransferTimeout)
    assert m.snap.error is not None
    assert m.snap.error.code == "timeout"


def test_time_left_is_sent_with_each_request() -> None:
    m = make(resource_timeout=100.0)
    assert request_of(m.handle(Start(), now=50.0)).time_left == pytest.approx(100.0)
    m.handle(TransportFailed(ConnectError("refused")), now=60.0)
    m.handle(RetryDue(), now=61.0)
    assert request_of(m.handle(Start(), now=70.0)).time_left == pytest.approx(80.0)


# -- redirects ----------------------------------------------------------------------------

SECRET_HEADERS = (
    ("Authorization", "Bearer secret"),
    ("Cookie", "session=1"),
    ("proxy-authorization", "Basic x"),
    ("X-Custom", "kept"),
)


def test_redirect_same_origin_keeps_credentials() -> None:
    m = make(headers=SECRET_HEADERS)
    first = headers_of(m.handle(Start(), now=0.0))
    assert first["authorization"] == "Bearer secret"
    assert first["cookie"] == "session=1"
    actions = m.handle(Response(302, {"location": "/mirror/big.bin"}), now=0.0)
    assert kinds(actions) == [DiscardResponse, SendRequest]
    assert request_of(actions).url == "https://example.com/mirror/big.bin"
    hdrs = headers_of(actions)
    assert hdrs["authorization"] == "Bearer secret"
    assert hdrs["cookie"] == "session=1"
    assert hdrs["x-custom"] == "kept"
    assert m.snap.phase is Phase.CONNECTING
    assert in_flight(m)


@pytest.mark.parametrize(
    "location",
    ["https://cdn.example.net/big.bin", "https://example.com:8443/big.bin", "//other.example/x"],
)
def test_redirect_to_another_origin_drops_credentials(location: str) -> None:
    m = make(headers=SECRET_HEADERS)
    m.handle(Start(), now=0.0)
    actions = m.handle(Response(301, {"location": location}), now=0.0)
    hdrs = headers_of(actions)
    assert "authorization" not in hdrs
    assert "cookie" not in hdrs
    assert "proxy-authorization" not in hdrs
    assert hdrs["x-custom"] == "kept"
    assert hdrs["accept-encoding"] == "identity"


def test_redirect_chain_then_download() -> None:
    m = make(headers=SECRET_HEADERS)
    m.handle(Start(), now=0.0)
    actions = m.handle(Response(302, {"location": "/a"}), now=0.0)
    assert "authorization" in headers_of(actions)
    actions = m.handle(Response(307, {"location": "https://cdn.example.net/b"}), now=0.0)
    assert "authorization" not in headers_of(actions)
    actions = m.handle(Response(308, {"location": "/c"}), now=0.0)
    assert request_of(actions).url == "https://cdn.example.net/c"
    assert "authorization" not in headers_of(actions)
    assert m.handle(ok(), now=0.0) == [Persist(), WriteBody(0, truncate=True)]


def test_redirect_on_resume_keeps_range() -> None:
    m = make()
    to_waiting_retry(m, 400)
    resume_request(m)
    hdrs = headers_of(m.handle(Response(307, {"location": "/mirror"}), now=0.0))
    assert hdrs["range"] == "bytes=400-"
    assert hdrs["if-range"] == ETAG


def test_ten_redirects_are_followed_the_eleventh_fails() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    for i in range(10):
        actions = m.handle(Response(302, {"location": f"/hop{i}"}), now=0.0)
        assert request_of(actions).url == f"https://example.com/hop{i}"
    actions = m.handle(Response(302, {"location": "/hop10"}), now=0.0)
    assert actions[0] == DiscardResponse()
    assert_failed(m, actions, RedirectError)
    assert m.snap.error is not None
    assert m.snap.error.code == "redirect_error"
    assert m.snap.error.status_code == 302


def test_redirect_count_is_per_attempt() -> None:
    m = make(max_redirects=3)
    m.handle(Start(), now=0.0)
    for i in range(3):
        m.handle(Response(302, {"location": f"/hop{i}"}), now=0.0)
    m.handle(ok(), now=0.0)
    m.handle(DataWritten(1), now=0.0)
    m.handle(BodyEnded(), now=0.0)
    resume_request(m)
    for i in range(3):
        m.handle(Response(302, {"location": f"/again{i}"}), now=0.0)
    assert m.snap.phase is Phase.CONNECTING


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (
            {"location": "http://example.com/files/big.bin"},
            "redirect from https to http refused (downgrade): 'http://example.com/files/big.bin'",
        ),
        (
            {"location": "file:///etc/passwd"},
            "redirect to a non-http(s) URL refused: 'file:///etc/passwd'",
        ),
        (
            {"location": "gopher://example.com/"},
            "redirect to a non-http(s) URL refused: 'gopher://example.com/'",
        ),
        ({}, "redirect without a Location header"),
    ],
)
def test_refused_redirects(headers: dict[str, str], reason: str) -> None:
    m = make()
    m.handle(Start(), now=0.0)
    actions = m.handle(Response(302, headers), now=0.0)
    assert actions[0] == DiscardResponse()
    assert_failed(m, actions, RedirectError)
    assert m.snap.error is not None
    assert m.snap.error.message == reason
    assert m.snap.error.status_code == 302


# -- control: suspend, resume, cancel -------------------------------------------------------


def _connecting(m: TransferMachine) -> None:
    m.handle(Start(), now=0.0)


def _transferring(m: TransferMachine) -> None:
    to_transferring(m)
    m.handle(DataWritten(300), now=0.0)


def _waiting(m: TransferMachine) -> None:
    to_waiting_retry(m, 300)


def _queued(m: TransferMachine) -> None:
    pass


RUNNING_PHASES: dict[Phase, Callable[[TransferMachine], None]] = {
    Phase.QUEUED: _queued,
    Phase.CONNECTING: _connecting,
    Phase.TRANSFERRING: _transferring,
    Phase.WAITING_RETRY: _waiting,
}


@pytest.mark.parametrize("phase", [Phase.CONNECTING, Phase.TRANSFERRING, Phase.WAITING_RETRY])
def test_suspend_then_resume(phase: Phase) -> None:
    m = make()
    RUNNING_PHASES[phase](m)
    assert m.snap.phase is phase
    offset = m.snap.offset
    actions = m.handle(SuspendRequested(), now=1.0)
    assert actions == [StopTransfer(), Persist()]
    assert m.state is TaskState.SUSPENDED
    assert m.snap.phase is Phase.SUSPENDED
    assert not in_flight(m)
    assert m.snap.offset == m.committed == offset
    assert m.snapshot(1.0).offset == offset

    assert m.handle(SuspendRequested(), now=2.0) == []  # idempotent

    actions = m.handle(ResumeRequested(), now=3.0)
    assert Enqueue() in actions
    assert actions[-1] == Enqueue()
    assert m.state is TaskState.RUNNING
    assert m.snap.phase is Phase.QUEUED
    hdrs = headers_of(m.handle(Start(), now=3.0))
    if offset:
        assert hdrs["range"] == f"bytes={offset}-"
    else:
        assert "range" not in hdrs


def test_resume_of_a_running_task_does_nothing() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    before = replace(m.snap)
    assert m.handle(ResumeRequested(), now=0.0) == []
    assert m.snap == before


@pytest.mark.parametrize("phase", list(RUNNING_PHASES))
def test_cancel(phase: Phase) -> None:
    m = make()
    RUNNING_PHASES[phase](m)
    actions = m.handle(CancelRequested(), now=1.0)
    assert StopTransfer() in actions
    assert RemovePartial() in actions
    assert Persist() in actions
    assert m.state is TaskState.CANCELING
    assert m.snap.phase is Phase.CANCELING
    assert not in_flight(m)
    assert m.handle(CancelRequested(), now=1.5) == []  # idempotent
    with pytest.raises(InvalidTransition):
        m.handle(SuspendRequested(), now=1.5)
    with pytest.raises(InvalidTransition):
        m.handle(ResumeRequested(), now=1.5)

    assert m.handle(CancelCleaned(), now=2.0) == [Persist()]
    assert m.state is TaskState.COMPLETED
    assert isinstance(m.snap.error, Cancelled)
    assert m.snap.detail == "cancelled"


def test_cancel_a_suspended_task() -> None:
    m = make()
    _transferring(m)
    m.handle(SuspendRequested(), now=0.0)
    actions = m.handle(CancelRequested(), now=0.0)
    assert RemovePartial() in actions
    assert m.snap.phase is Phase.CANCELING
    m.handle(CancelCleaned(), now=0.0)
    assert isinstance(m.snap.error, Cancelled)


def _completed_ok(m: TransferMachine) -> None:
    to_transferring(m)
    m.handle(DataWritten(SIZE), now=0.0)
    m.handle(BodyEnded(), now=0.0)
    m.handle(Finalized(), now=0.0)


def _completed_failed(m: TransferMachine) -> None:
    m.handle(Start(), now=0.0)
    m.handle(Response(404, {}), now=0.0)


def _completed_cancelled(m: TransferMachine) -> None:
    m.handle(CancelRequested(), now=0.0)
    m.handle(CancelCleaned(), now=0.0)


@pytest.mark.parametrize("finish", [_completed_ok, _completed_failed, _completed_cancelled])
@pytest.mark.parametrize(
    "event",
    [
        SuspendRequested(),
        ResumeRequested(),
        CancelRequested(),
        Start(),
        RetryDue(),
        Finalized(),
        CancelCleaned(),
        BodyEnded(),
        DataWritten(1),
        Response(200, {}),
        TransportFailed(ReadError("x")),
    ],
)
def test_completed_is_absorbing(finish: Callable[[TransferMachine], None], event: Event) -> None:
    m = make()
    finish(m)
    assert m.state is TaskState.COMPLETED
    before = replace(m.snap)
    snap_before = m.snapshot(5.0)
    committed, was_in_flight = m.committed, in_flight(m)
    with pytest.raises(InvalidTransition):
        m.handle(event, now=5.0)
    assert m.snap == before
    assert m.snapshot(5.0) == snap_before
    assert (m.committed, in_flight(m)) == (committed, was_in_flight)
    assert m.state is TaskState.COMPLETED


@pytest.mark.parametrize("finish", [_completed_ok, _completed_failed, _completed_cancelled])
def test_failed_and_interrupted_are_ignored_once_completed(
    finish: Callable[[TransferMachine], None],
) -> None:
    m = make()
    finish(m)
    before = replace(m.snap)
    assert m.handle(Failed(TransferError("late")), now=1.0) == []
    assert m.handle(Interrupted("late"), now=1.0) == []
    assert m.snap == before


@pytest.mark.parametrize(
    ("setup", "event"),
    [
        (_queued, Response(200, {})),
        (_queued, DataWritten(1)),
        (_queued, BodyEnded()),
        (_queued, RetryDue()),
        (_queued, Finalized()),
        (_queued, CancelCleaned()),
        (_queued, TransportFailed(ReadError("x"))),
        (_connecting, Start()),
        (_connecting, DataWritten(1)),
        (_connecting, Finalized()),
        (_transferring, Start()),
        (_transferring, Response(200, {})),
        (_transferring, RetryDue()),
        (_waiting, Start()),
        (_waiting, BodyEnded()),
        (_waiting, TransportFailed(ReadError("x"))),
    ],
)
def test_protocol_event_in_the_wrong_phase(
    setup: Callable[[TransferMachine], None], event: Event
) -> None:
    m = make()
    setup(m)
    before = replace(m.snap)
    committed, was_in_flight = m.committed, in_flight(m)
    with pytest.raises(InvalidTransition):
        m.handle(event, now=1.0)
    assert m.snap == before
    assert (m.committed, in_flight(m)) == (committed, was_in_flight)


def test_failed_event_completes_a_running_task() -> None:
    m = make()
    _transferring(m)
    err = TransferError("internal error")
    actions = m.handle(Failed(err), now=0.0)
    assert_failed(m, actions, TransferError)
    assert m.snap.error == err


# -- resource time ------------------------------------------------------------------------


def test_resource_time_excludes_suspended_time() -> None:
    m = make(resource_timeout=10.0)
    assert request_of(m.handle(Start(), now=0.0)).time_left == pytest.approx(10.0)
    m.handle(ok(), now=1.0)
    m.handle(DataWritten(100), now=5.0)
    m.handle(SuspendRequested(), now=6.0)
    assert m.elapsed(6.0) == pytest.approx(6.0)
    assert m.time_left(106.0) == pytest.approx(4.0)  # 100 s suspended do not count
    assert m.snapshot(106.0).active_seconds == pytest.approx(6.0)
    m.handle(ResumeRequested(), now=106.0)
    assert m.time_left(106.0) == pytest.approx(4.0)
    assert request_of(m.handle(Start(), now=106.0)).time_left == pytest.approx(4.0)
    assert m.time_left(108.0) == pytest.approx(2.0)


def test_resource_timeout_after_resume_counts_only_active_time() -> None:
    m = make(resource_timeout=10.0)
    m.handle(Start(), now=0.0)
    m.handle(SuspendRequested(), now=6.0)
    m.handle(ResumeRequested(), now=1000.0)
    m.handle(Start(), now=1000.0)
    actions = m.handle(TransportFailed(ConnectError("refused")), now=1003.0)
    assert isinstance(actions[-1], ScheduleRetry)  # 9 s used, 1 s left, backoff 0.75 s
    m.handle(RetryDue(), now=1003.75)
    actions = m.handle(Start(), now=1004.5)
    assert_failed(m, actions, TransferTimeout)


# -- interruption and restore -------------------------------------------------------------


@pytest.mark.parametrize("phase", list(RUNNING_PHASES))
def test_interrupted_suspends_with_the_reason(phase: Phase) -> None:
    m = make()
    RUNNING_PHASES[phase](m)
    reason = "interrupted: the process running it exited"
    assert m.handle(Interrupted(reason), now=1.0) == [Persist()]
    assert m.state is TaskState.SUSPENDED
    assert m.snap.detail == reason
    assert not in_flight(m)
    assert m.snap.error is None
    assert m.handle(Interrupted("again"), now=2.0) == []
    assert m.snap.detail == reason


def test_interrupted_while_canceling_removes_the_partial() -> None:
    m = make()
    _transferring(m)
    m.handle(CancelRequested(), now=0.0)
    assert m.handle(Interrupted("exited"), now=0.0) == [RemovePartial()]
    assert m.snap.phase is Phase.CANCELING


def test_from_snapshot_round_trip() -> None:
    m = make(resource_timeout=100.0, sha256=SHA)
    m.handle(Start(), now=0.0)
    m.handle(ok({"last-modified": LAST_MODIFIED}), now=1.0)
    m.handle(DataWritten(STREAM_CHECKPOINT_BYTES), now=1.1)  # checkpoint at 4 MiB
    m.handle(DataWritten(1000), now=1.2)  # not yet committed
    assert m.committed == STREAM_CHECKPOINT_BYTES < m.snap.offset

    snap = m.snapshot(5.0)
    assert snap.offset == STREAM_CHECKPOINT_BYTES
    assert snap.active_seconds == pytest.approx(5.0)
    assert snap.etag == ETAG
    assert snap.last_modified == LAST_MODIFIED
    assert snap.total == SIZE

    r = TransferMachine.from_snapshot(m.spec, snap, rng=lambda: 0.0)
    assert r.snapshot(5.0) == snap
    assert r.snapshot(500.0) == snap  # a rebuilt machine is not running until started
    assert r.committed == r.snap.offset == STREAM_CHECKPOINT_BYTES
    # As stored: no attempt starts before recovery has put it back in the queue.
    assert r.snap.phase is Phase.TRANSFERRING
    with pytest.raises(InvalidTransition):
        r.handle(Start(), now=5.0)
    assert r.snapshot(5.0) == snap
    assert r.snap is not snap
    r.snap.offset = 1
    assert snap.offset == STREAM_CHECKPOINT_BYTES  # the caller's snapshot is not shared

    # A process restart: the driver reports the interruption, then resumes.
    r = TransferMachine.from_snapshot(m.spec, snap)
    assert r.handle(Interrupted("interrupted: process exited"), now=0.0) == [Persist()]
    assert r.snapshot(0.0).active_seconds == pytest.approx(5.0)
    r.handle(ResumeRequested(), now=10.0)
    actions = r.handle(Start(), now=10.0)
    assert request_of(actions).time_left == pytest.approx(95.0)
    hdrs = headers_of(actions)
    assert hdrs["range"] == f"bytes={STREAM_CHECKPOINT_BYTES}-"
    assert hdrs["if-range"] == ETAG


def test_from_snapshot_of_a_finished_task_stays_finished() -> None:
    m = make()
    m.handle(Start(), now=0.0)
    m.handle(Response(404, {}), now=0.0)
    r = TransferMachine.from_snapshot(m.spec, m.snapshot(0.0))
    assert r.terminal
    assert r.snap.error == m.snap.error
    with pytest.raises(InvalidTransition):
        r.handle(ResumeRequested(), now=0.0)


def test_default_snapshot() -> None:
    snap = Snapshot()
    assert snap.phase is Phase.QUEUED
    assert snap.offset == 0
    assert snap.error is None


# -- stateful: random event sequences -------------------------------------------------------

ALL_EVENTS: list[Event] = [
    Start(),
    Response(200, {"content-length": "10"}),
    Response(206, {"content-range": "bytes 0-9/10"}),
    Response(503, {}),
    DataWritten(5),
    BodyEnded(),
    TransportFailed(ReadError("reset")),
    RetryDue(),
    Finalized(),
    FinalizeFailed(IntegrityError("length mismatch")),
    SuspendRequested(),
    ResumeRequested(),
    CancelRequested(),
    CancelCleaned(),
    Interrupted("interrupted"),
    Sealed(),
    Detached(),
]


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    return Spec(
        URL,
        headers=draw(st.sampled_from([(), (("Authorization", "Bearer t"), ("X-A", "1"))])),
        resource_timeout=draw(st.floats(min_value=20.0, max_value=10_000.0)),
        sha256=draw(st.none() | st.just(SHA)),
        max_redirects=draw(st.integers(min_value=1, max_value=3)),
        max_restarts=draw(st.integers(min_value=1, max_value=3)),
        max_attempts=draw(st.sampled_from([None, None, 1, 3])),
        retry_wait=draw(st.floats(min_value=0.1, max_value=5.0)),
        max_retry_wait=draw(st.floats(min_value=1.0, max_value=100.0)),
    )


TRANSPORT_ERRORS: list[tuple[type[TransferError], str]] = [
    (ReadError, "connection reset"),
    (ReadError, "connection reset"),
    (ConnectError, "connection refused"),
    (TransferTimeout, "idle timeout"),
    (TransferError, "not retryable"),
]


def transport_errors() -> st.SearchStrategy[TransferError]:
    # a fresh error each time: the machine may annotate the one it is given
    return st.sampled_from(TRANSPORT_ERRORS).map(lambda pair: pair[0](pair[1]))


@st.composite
def responses(draw: st.DrawFn, offset: int, known_total: int | None) -> Response:
    """A server answer shaped by what we asked for (bytes ``offset-``), honest or not."""
    status = draw(st.sampled_from([200] * 6 + [206] * 6 + [416, 416, 301, 302, 307, 404, 429, 503]))
    extra = draw(st.integers(min_value=1, max_value=8 * MIB))
    total = known_total if known_total is not None and known_total > offset else offset + extra
    content_range = draw(
        st.sampled_from(
            [
                None,
                f"bytes {offset}-{total - 1}/{total}",  # continues our bytes
                f"bytes 0-{total - 1}/{total}",  # the whole representation
                f"bytes {offset + 1}-{total}/{total + 1}",  # somewhere else
                f"bytes */{offset}",
                f"bytes */{total}",
            ]
        )
    )
    length = draw(st.none() | st.integers(min_value=0, max_value=8 * MIB))
    raw = {
        "content-range": content_range,
        "etag": draw(st.sampled_from([None, '"a"', '"b"', 'W/"a"'])),
        "last-modified": draw(st.sampled_from([None, LAST_MODIFIED])),
        "content-length": None if length is None else str(length),
        "location": draw(
            st.sampled_from(
                [None, "/next", "https://other.example/x", "http://example.com/down", "ftp://x/"]
            )
        ),
        "retry-after": draw(st.sampled_from([None, "0", "2", "100000000", "junk", LAST_MODIFIED])),
    }
    headers = {k: v for k, v in raw.items() if v is not None}
    return Response(status, headers, wall_time=784111777.0 - 5.0)


class MachineWorld(RuleBasedStateMachine):
    """Random control and protocol events; every step re-checks the machine's invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.m = TransferMachine(Spec(URL))
        self.now = 0.0
        self.elapsed = 0.0
        self.open_attempt = False  # a SendRequest whose answer has not been closed yet
        # The disk as the driver leaves it: the partial file's size (None: no file), how
        # much of it is synced, and the size of the file placed at the destination.
        self.disk: int | None = None
        self.durable = 0
        self.target: int | None = None
        self.last_event: Event = Start()

    @initialize(spec=specs(), jitter=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
    def setup(self, spec: Spec, jitter: float) -> None:
        self.m = TransferMachine(spec, rng=lambda: jitter)

    # -- the one place events are applied -----------------------------------------------

    def step(self, event: Event) -> list[Action]:
        m = self.m
        self.last_event = event
        before = replace(m.snap)
        committed, was_in_flight, terminal = m.committed, in_flight(m), m.terminal
        try:
            actions = m.handle(event, now=self.now)
        except InvalidTransition:
            assert m.snap == before, f"{event!r} raised but changed the snapshot"
            assert m.committed == committed
            # Refused where the table does not accept it (or for a bad payload).
            accepted = before.phase in TRANSITIONS[type(event)].accepts
            assert not accepted or isinstance(event, SegmentWritten | Recovered), event
            return []
        # Any other exception propagates and fails the test.

        # Every step is one the transition table allows, to a phase it names.
        rule = TRANSITIONS[type(event)]
        if before.phase in rule.ignores:
            assert (actions, m.snap, m.committed) == ([], before, committed), event
        else:
            assert m.snap.phase in rule.moves[before.phase], (event, before.phase, m.snap.phase)

        if terminal:
            assert m.terminal, "COMPLETED must stay COMPLETED"
            assert m.snap == before
            assert actions == []

        # offset only shrinks on a restart, a cancel or a failure that removes the partial.
        shrank = m.snap.offset < before.offset or m.committed < committed
        if shrank and not isinstance(event, Recovered):  # recovery: the disk decides
            assert m.snap.restarts > before.restarts or RemovePartial() in actions, (
                event,
                actions,
            )
        if m.snap.restarts > before.restarts and not m.terminal:
            assert m.snap.offset == m.committed == 0

        sends = [a for a in actions if isinstance(a, SendRequest)]
        assert len(sends) <= 1, actions
        if sends:
            if isinstance(event, Start):
                assert not was_in_flight, "a second attempt started while one was in flight"
                assert not self.open_attempt
            else:
                # A redirect or a restart: the answer is discarded before the next request.
                assert isinstance(event, Response), event
                assert was_in_flight
                assert DiscardResponse() in actions[: actions.index(sends[0])]
            assert in_flight(m)
            self.check_request(sends[0])
        for a in actions:
            if isinstance(a, WriteBody):
                assert isinstance(event, Response)
                assert a.start == m.snap.offset
                assert not a.truncate or a.start == 0
            if isinstance(a, ScheduleRetry):
                assert 0 <= a.delay < m.time_left(self.now)
                # automatic retries stop at max_attempts (a caller's resume may go beyond it)
                assert m.spec.max_attempts is None or m.snap.attempts < m.spec.max_attempts
                assert m.snap.phase is Phase.WAITING_RETRY
            if isinstance(a, Finalize):
                assert m.snap.phase is Phase.VERIFYING
                assert a.sha256 == m.spec.sha256

        if sends:
            self.open_attempt = True
        elif isinstance(event, TransportFailed | BodyEnded | Interrupted) or any(
            isinstance(a, StopTransfer | Finalize | DiscardResponse) for a in actions
        ):
            self.open_attempt = False
        self.track_disk(event, before.phase, actions)
        return actions

    def track_disk(self, event: Event, phase: Phase, actions: list[Action]) -> None:
        """What the driver's work did to the files (the machine asked for all of it)."""
        if isinstance(event, DataWritten):  # written before the driver said so
            self.disk = (self.disk or 0) + event.nbytes
        if isinstance(event, Finalized):
            self.target, self.disk, self.durable = self.m.snap.offset, None, 0
        for a in actions:
            match a:
                case WriteBody(start=start):
                    # Never an append past the bytes the file has.
                    assert start == 0 or (self.disk is not None and self.disk >= start), (
                        start,
                        self.disk,
                    )
                    self.disk, self.durable = start, min(self.durable, start)
                case Persist():
                    self.durable = self.disk or 0
                case RemovePartial():
                    self.disk, self.durable = None, 0
                case TruncatePartial(size=size):
                    assert self.disk is not None
                    assert size <= self.disk
                    self.disk, self.durable = size, min(self.durable, size)

    def check_request(self, req: SendRequest) -> None:
        hdrs = {k.lower(): v for k, v in req.headers}
        assert hdrs["accept-encoding"] == "identity"
        if self.m.snap.offset > 0:
            assert hdrs["range"] == f"bytes={self.m.snap.offset}-"
            assert not hdrs.get("if-range", "").startswith("W/")
        else:
            assert "range" not in hdrs
            assert "if-range" not in hdrs
        if "authorization" in hdrs:
            assert origin(req.url) == origin(self.m.spec.url)

    # -- protocol events in plausible phases --------------------------------------------

    @precondition(lambda self: not self.m.terminal)
    # Short steps too: bytes written within a second of a checkpoint are not yet committed.
    @rule(dt=st.sampled_from([0.0, 0.2]) | st.floats(min_value=0.0, max_value=5.0), data=st.data())
    def advance(self, dt: float, data: st.DataObject) -> None:
        """Time passes, then the next plausible protocol event for the current phase."""
        self.now += dt
        phase = self.m.snap.phase
        roll = data.draw(st.integers(min_value=0, max_value=9), label="roll")
        event: Event
        if phase is Phase.QUEUED:
            event = Start()
        elif phase is Phase.CONNECTING:
            if roll < 8:
                event = data.draw(responses(self.m.snap.offset, self.m.snap.total))
            else:
                event = TransportFailed(data.draw(transport_errors()))
        elif phase is Phase.TRANSFERRING:
            if roll < 6:
                sizes = st.integers(min_value=0, max_value=6 * MIB)
                total, offset = self.m.snap.total, self.m.snap.offset
                if total is not None and total > offset:
                    sizes |= st.just(total - offset)  # the rest, exactly: a whole file
                event = DataWritten(data.draw(sizes))
            elif roll < 8:
                event = BodyEnded()
            else:
                event = TransportFailed(data.draw(transport_errors()))
        elif phase is Phase.WAITING_RETRY:
            event = RetryDue()
        elif phase is Phase.VERIFYING:
            event = Finalized() if roll < 8 else FinalizeFailed(IntegrityError("sha256 mismatch"))
        elif phase is Phase.SUSPENDED:
            event = ResumeRequested()
        else:
            assert phase is Phase.CANCELING
            event = CancelCleaned()
        self.step(event)

    # -- control events and oddities at any time ------------------------------------------

    @rule(
        kind=st.sampled_from(
            ["suspend", "suspend", "resume", "resume", "cancel", "crash"] + ["any", "repeat"] * 2
        ),
        event=st.sampled_from(ALL_EVENTS),
        power_loss=st.booleans(),
        kept=st.floats(min_value=0.0, max_value=1.0),
        placed=st.booleans(),
    )
    def disturb(self, kind: str, event: Event, power_loss: bool, kept: float, placed: bool) -> None:
        # One rule with weighted kinds: cancel and crashes end or reset the interesting paths,
        # so they come less often than suspend/resume.
        if kind == "suspend":
            self.step(SuspendRequested())
        elif kind == "resume":
            self.step(ResumeRequested())
        elif kind == "cancel":
            self.step(CancelRequested())
        elif kind == "crash":
            self.crash_and_restore(power_loss=power_loss, kept=kept, placed=placed)
        elif kind == "repeat":
            self.step(self.last_event)  # a late or duplicated delivery by the driver
        else:
            self.step(event)  # any event in any phase: only InvalidTransition may escape

    @precondition(lambda self: not self.m.terminal and self.disk is not None)
    @rule(
        power_loss=st.booleans(),
        kept=st.floats(min_value=0.0, max_value=1.0),
        placed=st.booleans(),
        damage=st.sampled_from(["none", "none", "gone", "short"]),
    )
    def crash(self, power_loss: bool, kept: float, placed: bool, damage: str) -> None:
        """A crash while the task is unfinished, where recovery has something to decide;
        ``damage``: meanwhile someone deleted the partial file, or cut it short."""
        if damage == "gone":
            self.disk, self.durable = None, 0
        elif damage == "short" and self.disk is not None:
            self.disk = self.durable = int(kept * min(self.disk, self.durable))
        self.crash_and_restore(power_loss=power_loss, kept=kept, placed=placed)

    def crash_and_restore(self, *, power_loss: bool, kept: float, placed: bool) -> None:
        """The process dies (or the machine: ``power_loss``): only the persisted snapshot and
        the disk survive; recover() reconciles them, then interrupts the task.

        A power loss keeps the synced bytes and ``kept`` of the others. ``placed``: a task
        that was verifying died after the engine placed its file (the engine saves the full
        offset just before it places), before its completion was committed.
        """
        if placed and self.m.snap.phase is Phase.VERIFYING:
            # The engine's finalize: seal (sync), save, place; the crash loses Finalized.
            self.step(Sealed())
            self.durable = self.disk or 0
            self.target, self.disk, self.durable = self.m.snap.offset, None, 0
        snap = replace(self.m.snapshot(self.now), boot_id=BOOT)
        durable = self.durable
        if power_loss and self.disk is not None:
            self.disk = durable + int(kept * (self.disk - durable))
        self.m = TransferMachine.from_snapshot(self.m.spec, snap, rng=self.m.rng)
        self.open_attempt = False
        assert self.m.snapshot(self.now) == snap
        disk = DiskFacts(self.disk, self.target) if needs_disk(self.m.spec, snap) else None
        events = recover(self.m.spec, snap, disk, same_boot=not power_loss, owner_died=True)
        for event in events:
            self.step(event)
        m = self.m
        if not m.terminal:
            # The task never claims bytes the file lacks, nor, after a power loss, bytes
            # that were never synced.
            assert m.snap.offset <= (self.disk or 0), (m.snap.offset, self.disk)
            if power_loss:
                assert m.snap.offset <= durable
            assert m.snap.phase in (Phase.SUSPENDED, Phase.CANCELING)
        elif m.snap.error is None and events:
            # Completed by recovery: the placed file is the whole resource.
            assert events[0] == Recovered(snap.offset, placed=True, note=events[0].note)  # type: ignore[union-attr]
            assert self.target == m.snap.total == m.snap.offset

    # -- invariants after every step ----------------------------------------------------

    @invariant()
    def machine_invariants(self) -> None:
        m = self.m
        assert isinstance(m.state, TaskState)
        assert m.state is PHASE_STATE[m.snap.phase]
        assert 0 <= m.committed <= m.snap.offset
        assert m.snapshot(self.now).offset == m.committed
        if not m.terminal:
            assert m.snap.error is None
        if in_flight(m):
            assert m.snap.phase in (Phase.CONNECTING, Phase.TRANSFERRING, Phase.VERIFYING)
        if self.open_attempt:
            assert in_flight(m)
        assert m.snap.restarts <= m.spec.max_restarts + 1
        elapsed = m.elapsed(self.now)
        assert elapsed >= self.elapsed - 1e-6, "resource time went backwards"
        self.elapsed = elapsed


MachineWorld.TestCase.settings = settings(max_examples=300, deadline=None, stateful_step_count=50)
TestMachineWorld = MachineWorld.TestCase
