"""The upload machine with no I/O: plain and multipart, tus and the IETF draft (issue 20).

The engine speaks the protocols (creation, HEAD, PATCH) and reports what the server said
as events; these tests feed the machine the event sequences those exchanges produce and
check what it does to the task: where the next attempt starts, what is persisted, what is
retried. A tus/IETF offset is the server's word, so it may go down after a 409 (the engine
asks the server again and reports its offset), and a 460 (checksum mismatch) changes nothing
until the engine gives up with ``Failed(IntegrityError)``.
"""

from __future__ import annotations

from typing import Any

import pytest

from bgtransfer._exceptions import (
    ConnectError,
    ContentChanged,
    HTTPStatusError,
    IntegrityError,
    InvalidTransition,
    ReadError,
    TransferError,
    TransferTimeout,
)
from bgtransfer._models import Phase, TaskState
from bgtransfer._protocol._machine import (
    CHECKPOINT_BYTES,
    CancelCleaned,
    CancelRequested,
    Enqueue,
    Failed,
    Persist,
    RemovePartial,
    Response,
    ResumeRequested,
    RetryDue,
    ScheduleRetry,
    SendRequest,
    Spec,
    Start,
    StopTransfer,
    SuspendRequested,
    TransportFailed,
)
from bgtransfer._protocol._upload import (
    PROTOCOLS,
    RESPONSE_BODY_CAP,
    FinalResponse,
    UploadCreated,
    UploadLost,
    UploadMachine,
    UploadProgress,
    idempotent,
)

URL = "https://up.example/files"
SIZE = 10 * CHECKPOINT_BYTES
UPLOAD_URL = "https://up.example/files/abc"
RESUMABLE = ("tus", "ietf")
FAILED_ACTIONS = [StopTransfer(), RemovePartial(), Persist()]


def in_flight(m: UploadMachine) -> bool:
    """A request is out (or its body is being read): what the removed ``in_flight`` flag
    said, derived from the phase as the driver sees it."""
    return m.snap.phase in (Phase.CONNECTING, Phase.TRANSFERRING)


def make(protocol: str = "tus", method: str = "POST", **spec: object) -> UploadMachine:
    full = {"source_size": SIZE, **spec}
    return UploadMachine(
        Spec(URL, kind="upload", method=method, protocol=protocol, **full)  # type: ignore[arg-type]
    )


def created(protocol: str = "tus", now: float = 0.0, **spec: Any) -> UploadMachine:
    m = make(protocol, **spec)
    m.handle(Start(), now=now)
    assert m.handle(UploadCreated(UPLOAD_URL), now=now) == [Persist()]
    return m


def final(status: int, body: bytes = b"", **headers: str) -> FinalResponse:
    lower = {k.replace("_", "-"): v for k, v in headers.items()}
    return FinalResponse(status, lower, body, wall_time=1000.0)


# -- which methods may be retried ----------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "put", "DELETE", "GET", "HEAD", "OPTIONS"])
def test_idempotent_methods_may_be_retried(method: str) -> None:
    assert idempotent(method, (), retry_unsafe=False)


@pytest.mark.parametrize("method", ["POST", "PATCH", "post"])
def test_a_non_idempotent_method_needs_a_key_or_consent(method: str) -> None:
    assert not idempotent(method, (("X-Other", "1"),), retry_unsafe=False)
    assert idempotent(method, (("Idempotency-Key", "k1"),), retry_unsafe=False)
    assert idempotent(method, (("idempotency-key", "k1"),), retry_unsafe=False)
    assert idempotent(method, (), retry_unsafe=True)


def test_the_protocols() -> None:
    assert frozenset({"plain", "multipart", "tus", "ietf"}) == PROTOCOLS


# -- plain and multipart: every attempt from byte 0 ----------------------------------------


@pytest.mark.parametrize("protocol", ["plain", "multipart"])
def test_a_plain_upload_sends_the_callers_request_and_completes(protocol: str) -> None:
    headers = (("Authorization", "Bearer t"),)
    m = make(protocol, method="PUT", headers=headers)
    (req,) = m.handle(Start(), now=0.0)
    assert req == SendRequest(URL, headers, m.spec.resource_timeout)
    assert m.snap.phase is Phase.CONNECTING
    assert m.snap.detail == "connecting"
    assert m.snap.attempts == 1
    assert m.snap.total == SIZE
    assert in_flight(m)
    m.handle(UploadProgress(SIZE // 2), now=0.5)
    assert m.snap.offset == SIZE // 2
    actions = m.handle(final(201, b'{"id": 7}', location="/files/7"), now=0.6)
    assert actions == [Persist()]
    assert m.state is TaskState.COMPLETED
    assert m.snap.error is None
    assert m.snap.detail == "completed"
    assert m.snap.offset == m.committed == SIZE
    assert (m.snap.status_code, m.snap.response_status) == (201, 201)
    assert m.snap.response_headers == (("location", "/files/7"),)
    assert m.snap.response_body == b'{"id": 7}'
    assert not in_flight(m)


def test_a_plain_upload_retries_from_byte_zero() -> None:
    m = make("plain", method="PUT")
    m.handle(Start(), now=0.0)
    m.handle(UploadProgress(CHECKPOINT_BYTES + 5), now=0.1)
    actions = m.handle(TransportFailed(ReadError("reset")), now=0.2)
    assert actions == [Persist(), ScheduleRetry(0.75)]
    assert m.snap.phase is Phase.WAITING_RETRY
    assert m.handle(RetryDue(), now=1.0) == [Enqueue()]
    m.handle(Start(), now=1.0)
    assert m.snap.offset == m.committed == 0
    assert m.snap.detail == "connecting"
    assert m.snap.attempts == 2


def test_an_unsafe_post_fails_at_the_first_lost_connection_with_a_hint() -> None:
    m = make("plain", method="POST")
    m.handle(Start(), now=0.0)
    actions = m.handle(TransportFailed(ReadError("connection lost")), now=0.1)
    assert actions == FAILED_ACTIONS
    assert isinstance(m.snap.error, ReadError)
    expected = (
        "connection lost (POST is not retried: the server may have acted on it; "
        "send an Idempotency-Key header or pass retry_unsafe=True)"
    )
    assert m.snap.error.message == expected
    assert str(m.snap.error) == expected


@pytest.mark.parametrize(
    "error", [ConnectError("refused"), TransferTimeout("no progress for 60 s")]
)
def test_an_unsafe_post_is_not_retried_after_any_transport_failure(
    error: TransferError,
) -> None:
    m = make("multipart", method="POST")
    m.handle(Start(), now=0.0)
    m.handle(TransportFailed(error), now=0.1)
    assert m.snap.error is error
    assert m.snap.error.code == error.code
    assert "retry_unsafe=True" in m.snap.error.message


def test_an_unsafe_post_answered_503_is_final_without_the_transport_hint() -> None:
    m = make("plain", method="POST")
    m.handle(Start(), now=0.0)
    actions = m.handle(final(503, retry_after="1"), now=0.1)
    assert actions == FAILED_ACTIONS
    assert isinstance(m.snap.error, HTTPStatusError)
    assert m.snap.error.status_code == 503
    assert m.snap.error.message == "server answered 503"


@pytest.mark.parametrize(
    "spec",
    [{"headers": (("Idempotency-Key", "k"),)}, {"retry_unsafe": True}],
)
def test_a_post_the_caller_made_safe_is_retried(spec: dict[str, object]) -> None:
    m = make("plain", method="POST", **spec)
    m.handle(Start(), now=0.0)
    assert m.handle(TransportFailed(ReadError("reset")), now=0.1)[-1] == ScheduleRetry(0.75)
    assert m.snap.error is None
    assert m.snap.phase is Phase.WAITING_RETRY


def test_a_non_retryable_error_status_is_final_and_kept() -> None:
    m = make("plain", method="PUT")
    m.handle(Start(), now=0.0)
    actions = m.handle(final(413, b"too big", connection="close"), now=0.1)
    assert actions == FAILED_ACTIONS
    assert isinstance(m.snap.error, HTTPStatusError)
    assert m.snap.error.status_code == 413
    assert m.snap.error.message == "server answered 413 to the upload; not retried"
    assert m.snap.response_status == 413
    assert m.snap.response_headers == (("connection", "close"),)
    assert m.snap.response_body == b"too big"


def test_the_kept_answer_is_capped() -> None:
    m = make("plain", method="PUT")
    m.handle(Start(), now=0.0)
    m.handle(final(200, b"x" * (RESPONSE_BODY_CAP + 10)), now=0.1)
    assert m.snap.response_body == b"x" * RESPONSE_BODY_CAP


def test_a_success_of_unknown_size_keeps_the_confirmed_offset() -> None:
    m = make("plain", method="PUT", source_size=None)
    m.handle(Start(), now=0.0)
    m.handle(UploadProgress(700), now=0.1)
    m.handle(final(204), now=0.2)
    assert m.snap.offset == m.committed == 700
    assert m.state is TaskState.COMPLETED


# -- tus and the IETF draft: the server's offset -------------------------------------------


@pytest.mark.parametrize("protocol", RESUMABLE)
def test_creation_records_where_the_upload_lives(protocol: str) -> None:
    m = make(protocol)
    (req,) = m.handle(Start(), now=0.0)
    assert isinstance(req, SendRequest)
    assert req.url == URL
    assert m.snap.upload_url is None
    assert m.handle(UploadCreated(UPLOAD_URL), now=0.0) == [Persist()]
    assert m.snap.upload_url == UPLOAD_URL
    assert m.snap.phase is Phase.TRANSFERRING
    assert m.snap.detail == "uploading"


@pytest.mark.parametrize("protocol", RESUMABLE)
def test_offsets_are_checkpointed_every_chunk_of_bytes_or_second(protocol: str) -> None:
    m = created(protocol)
    assert m.handle(UploadProgress(100), now=0.5) == []
    assert m.committed == 0
    assert m.handle(UploadProgress(CHECKPOINT_BYTES), now=0.6) == [Persist()]
    assert m.committed == CHECKPOINT_BYTES
    assert m.handle(UploadProgress(CHECKPOINT_BYTES + 1), now=0.7) == []
    assert m.handle(UploadProgress(CHECKPOINT_BYTES + 2), now=1.6) == [Persist()]  # 1 s later
    assert m.committed == CHECKPOINT_BYTES + 2
    assert m.handle(UploadProgress(CHECKPOINT_BYTES + 3), now=2.5) == []
    assert m.snap.offset == CHECKPOINT_BYTES + 3


@pytest.mark.parametrize("protocol", RESUMABLE)
def test_after_a_409_the_servers_lower_offset_is_the_truth(protocol: str) -> None:
    m = created(protocol)
    m.handle(UploadProgress(3 * CHECKPOINT_BYTES), now=0.1)
    assert m.committed == 3 * CHECKPOINT_BYTES
    # The PATCH got 409; the engine asked the server (HEAD), which has fewer bytes.
    assert m.handle(UploadProgress(CHECKPOINT_BYTES), now=0.2) == [Persist()]
    assert m.snap.offset == m.committed == CHECKPOINT_BYTES
    assert m.handle(UploadProgress(CHECKPOINT_BYTES - 10), now=0.3) == []
    assert m.snap.offset == CHECKPOINT_BYTES - 10


@pytest.mark.parametrize("protocol", RESUMABLE)
def test_a_retry_resumes_from_the_confirmed_offset(protocol: str) -> None:
    m = created(protocol)
    m.handle(UploadProgress(5000), now=0.1)
    actions = m.handle(TransportFailed(ReadError("reset")), now=0.2)
    assert actions == [Persist(), ScheduleRetry(0.75)]  # a POST: the offset makes it safe
    assert m.committed == 5000
    assert m.snap.failures == 1
    m.handle(RetryDue(), now=1.0)
    (req,) = m.handle(Start(), now=1.0)
    assert isinstance(req, SendRequest)
    assert m.snap.offset == 5000
    assert m.snap.detail == "resuming from byte 5000"
    assert m.snap.upload_url == UPLOAD_URL
    # The server's HEAD says where it is; only bytes it gained reset the failure count.
    m.handle(UploadProgress(5000), now=1.1)
    assert m.snap.failures == 1
    m.handle(UploadProgress(6000), now=1.2)
    assert m.snap.failures == 0


@pytest.mark.parametrize("protocol", RESUMABLE)
def test_a_460_three_times_ends_the_upload_as_an_integrity_error(protocol: str) -> None:
    m = created(protocol)
    m.handle(UploadProgress(4000), now=0.1)
    # Two 460s change nothing the machine sees; the third makes the engine give up.
    actions = m.handle(Failed(IntegrityError("tus checksum mismatch three times")), now=0.2)
    assert actions == FAILED_ACTIONS
    assert isinstance(m.snap.error, IntegrityError)
    assert m.state is TaskState.COMPLETED


@pytest.mark.parametrize("protocol", RESUMABLE)
def test_a_lost_upload_starts_again_as_a_new_one(protocol: str) -> None:
    m = created(protocol, max_restarts=1)
    m.handle(UploadProgress(CHECKPOINT_BYTES), now=0.1)
    actions = m.handle(UploadLost(), now=0.2)
    assert actions == [Persist()]
    assert m.snap.upload_url is None
    assert m.snap.offset == m.committed == 0
    assert m.snap.restarts == 1
    assert m.snap.phase is Phase.CONNECTING
    assert m.snap.detail == "the server lost the upload: starting it again"
    m.handle(UploadCreated(UPLOAD_URL + "2"), now=0.3)
    assert m.snap.upload_url == UPLOAD_URL + "2"
    actions = m.handle(UploadLost(), now=0.4)
    assert actions == FAILED_ACTIONS
    assert isinstance(m.snap.error, ContentChanged)


@pytest.mark.parametrize("protocol", RESUMABLE)
def test_a_retryable_answer_waits_as_long_as_retry_after_says(protocol: str) -> None:
    m = created(protocol)
    actions = m.handle(final(503, retry_after="7"), now=0.1)
    assert actions == [Persist(), ScheduleRetry(7.0)]
    assert m.snap.status_code == 503
    assert m.snap.error is None


@pytest.mark.parametrize("protocol", RESUMABLE)
def test_the_completing_answer_finishes_at_the_source_size(protocol: str) -> None:
    m = created(protocol)
    m.handle(UploadProgress(SIZE - 1), now=0.1)
    assert m.handle(final(204), now=0.2) == [Persist()]
    assert m.snap.offset == m.committed == SIZE
    assert m.state is TaskState.COMPLETED


@pytest.mark.parametrize(
    "event",
    [UploadProgress(1), UploadCreated(UPLOAD_URL), UploadLost(), final(200)],
    ids=lambda e: type(e).__name__,
)
def test_server_facts_before_the_attempt_are_refused_by_name(event: object) -> None:
    m = make("tus")
    with pytest.raises(InvalidTransition) as exc:
        m.handle(event, now=0.0)  # type: ignore[arg-type]
    assert exc.value.message == f"{type(event).__name__} is not allowed while the task is queued"
    assert m.snap.phase is Phase.QUEUED


def test_a_second_start_and_late_progress_are_refused() -> None:
    m = make("tus")
    m.handle(Start(), now=0.0)
    with pytest.raises(InvalidTransition) as exc:
        m.handle(Start(), now=0.0)
    assert exc.value.message == "Start is not allowed while the task is connecting"
    m.handle(final(200), now=0.1)
    assert m.state is TaskState.COMPLETED
    with pytest.raises(InvalidTransition) as exc:
        m.handle(UploadProgress(1), now=0.2)
    assert exc.value.message == "UploadProgress is not allowed while the task is done"


def test_a_download_response_is_a_type_error_for_an_upload() -> None:
    m = make("plain", method="PUT")
    m.handle(Start(), now=0.0)
    with pytest.raises(TypeError) as exc:
        m.handle(Response(200, {}), now=0.1)
    assert str(exc.value) == "uploads end with FinalResponse, not Response"


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_any_2xx_completes_the_upload(status: int) -> None:
    m = created("tus")
    assert m.handle(final(status), now=0.1) == [Persist()]
    assert m.state is TaskState.COMPLETED
    assert m.snap.error is None
    assert in_flight(m) is False


@pytest.mark.parametrize("status", [199, 300, 304])
def test_an_answer_outside_2xx_fails_the_upload(status: int) -> None:
    m = created("tus")
    assert m.handle(final(status), now=0.1) == FAILED_ACTIONS
    assert isinstance(m.snap.error, HTTPStatusError)
    assert m.snap.error.status_code == status


def test_a_retry_after_date_is_read_against_the_answers_wall_time() -> None:
    m = created("ietf")
    # final() answers at wall time 1000.0; the date is 30 s later.
    date = "Thu, 01 Jan 1970 00:17:10 GMT"
    assert m.handle(final(429, retry_after=date), now=0.1) == [Persist(), ScheduleRetry(30.0)]


def test_progress_on_a_resumed_attempt_is_uploading_again() -> None:
    m = created("tus")
    m.handle(UploadProgress(5000), now=0.1)
    m.handle(TransportFailed(ReadError("reset")), now=0.2)
    m.handle(RetryDue(), now=1.0)
    m.handle(Start(), now=1.0)
    assert m.snap.phase is Phase.CONNECTING
    m.handle(UploadProgress(5000), now=1.1)
    assert m.snap.phase is Phase.TRANSFERRING
    assert m.snap.detail == "uploading"


@pytest.mark.parametrize("protocol", ["tus", "plain"])
def test_a_final_status_reported_as_a_transport_failure_is_not_retried(protocol: str) -> None:
    m = make(protocol, method="PUT")
    m.handle(Start(), now=0.0)
    err = HTTPStatusError("server answered 404", status_code=404)
    assert m.handle(TransportFailed(err), now=0.1) == FAILED_ACTIONS
    assert m.snap.error is err
    assert err.message == "server answered 404"  # no retry hint: it was never retryable


@pytest.mark.parametrize("protocol", ["tus", "plain"])
def test_an_error_no_retry_can_fix_fails_even_a_resumable_upload(protocol: str) -> None:
    m = make(protocol, method="PUT")
    m.handle(Start(), now=0.0)
    err = TransferError("bad TLS certificate")
    assert m.handle(TransportFailed(err), now=0.1) == FAILED_ACTIONS
    assert m.snap.error is err


# -- lifecycle shared with downloads -------------------------------------------------------


def test_an_upload_out_of_resource_time_fails_at_start() -> None:
    m = make("tus", resource_timeout=10.0)
    m.handle(Start(), now=0.0)
    m.handle(TransportFailed(ReadError("reset")), now=5.0)
    m.handle(RetryDue(), now=10.0)
    actions = m.handle(Start(), now=10.0)
    assert actions == FAILED_ACTIONS
    assert isinstance(m.snap.error, TransferTimeout)
    assert m.snap.attempts == 1


def test_an_upload_with_half_a_second_left_still_starts() -> None:
    m = make("tus", resource_timeout=10.0)
    m.handle(Start(), now=0.0)
    m.handle(TransportFailed(ReadError("reset")), now=9.0)
    m.handle(RetryDue(), now=9.5)
    (req,) = m.handle(Start(), now=9.5)
    assert isinstance(req, SendRequest)
    assert req.time_left == pytest.approx(0.5)


def test_suspend_resume_and_cancel_an_upload() -> None:
    m = created("tus")
    m.handle(UploadProgress(CHECKPOINT_BYTES + 1), now=0.1)
    assert m.handle(SuspendRequested(), now=0.2) == [StopTransfer(), Persist()]
    assert m.state is TaskState.SUSPENDED
    assert m.committed == CHECKPOINT_BYTES + 1
    assert m.handle(ResumeRequested(), now=5.0) == [Persist(), Enqueue()]
    m.handle(Start(), now=5.0)
    assert m.snap.detail == f"resuming from byte {CHECKPOINT_BYTES + 1}"
    assert m.handle(CancelRequested(), now=6.0) == [StopTransfer(), Persist(), RemovePartial()]
    m.handle(CancelCleaned(), now=6.1)
    assert m.state is TaskState.COMPLETED
    assert m.snap.error is not None
    assert m.snap.error.code == "cancelled"
