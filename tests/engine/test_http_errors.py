"""The one aiohttp -> TransferError mapping every driver uses, and the one speed watchdog."""

from __future__ import annotations

import asyncio
import errno
import itertools

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from bgtransfer._engine._http import body_failure, request_failure
from bgtransfer._engine._watchdog import too_slow
from bgtransfer._exceptions import (
    ConnectError,
    NetworkError,
    ReadError,
    TransferError,
    TransferTimeout,
)


def refused() -> aiohttp.ClientConnectorError:
    key = ConnectionKey("127.0.0.1", 9, False, True, None, None, None)
    return aiohttp.ClientConnectorError(key, OSError(errno.ECONNREFUSED, "refused"))


def test_a_refused_connect_is_a_retryable_connect_error() -> None:
    failure = request_failure(refused(), 60.0)
    assert failure is not None
    assert type(failure.error) is ConnectError
    assert failure.error.message == "cannot connect to 127.0.0.1:9: connection refused"
    assert failure.retryable


def test_silence_is_a_timeout_worded_for_the_stage() -> None:
    got = request_failure(TimeoutError(), 30.0)
    assert got is not None
    assert isinstance(got.error, TransferTimeout)
    assert got.error.message == "no response within 30 s (request_timeout)"
    upload = request_failure(TimeoutError(), 30.0, silence="no progress for")
    assert upload is not None
    assert upload.error.message == "no progress for 30 s (request_timeout)"


def test_an_unparsable_response_is_not_retried() -> None:
    exc = aiohttp.ClientResponseError(None, (), message="Got more than 8190 bytes")  # type: ignore[arg-type]
    got = request_failure(exc, 60.0)
    assert got is not None
    assert not got.retryable
    assert type(got.error) is TransferError
    assert got.error.message == "invalid HTTP response from server: Got more than 8190 bytes"


@pytest.mark.parametrize(
    ("exc", "why"),
    [
        (aiohttp.ServerDisconnectedError(), "server closed the connection"),
        (aiohttp.ClientPayloadError("x"), "body cut short"),
        (aiohttp.ClientOSError(errno.ECONNRESET, "reset"), "connection reset"),
        (ConnectionResetError(errno.ECONNRESET, "reset"), "connection reset"),
    ],
)
def test_a_connection_lost_before_the_answer_is_a_read_error(exc: BaseException, why: str) -> None:
    got = request_failure(exc, 60.0)
    assert got is not None
    assert type(got.error) is ReadError
    assert got.error.message == f"connection lost before the response: {why}"
    assert got.retryable
    upload = request_failure(exc, 60.0, lost="lost near byte 7 ({name})")
    assert upload is not None
    assert upload.error.message == f"lost near byte 7 ({type(exc).__name__})"


def test_other_client_errors_are_network_errors_and_the_rest_propagates() -> None:
    got = request_failure(aiohttp.InvalidURL("http://[x"), 60.0)
    assert got is not None
    assert type(got.error) is NetworkError
    assert got.error.message == "request failed: <InvalidURL http://[x>"
    assert request_failure(ValueError("a bug"), 60.0) is None
    assert body_failure(ValueError("a bug"), 60.0, "x") is None


def test_body_failures_name_where_the_body_broke() -> None:
    cut = body_failure(aiohttp.ClientPayloadError("x"), 60.0, "connection lost at byte 300")
    assert cut is not None
    assert type(cut.error) is ReadError
    assert cut.error.message == "connection lost at byte 300 (body cut short)"
    quiet = body_failure(TimeoutError(), 12.0, "ignored")
    assert quiet is not None
    assert quiet.error.message == "no data for 12 s (request_timeout)"


def test_the_watchdog_fires_on_a_trickle_and_not_on_a_flow() -> None:
    async def run() -> None:
        ticks = itertools.count()

        def clock() -> float:  # one virtual second per look
            return float(next(ticks))

        trickle = iter(range(0, 10_000, 10))  # 10 B a virtual second
        error = await asyncio.wait_for(too_slow(lambda: next(trickle), 100, 0.4, clock), 5)
        assert error.message == "slower than 100 B/s for 0.4 s"

        flow = iter(range(0, 10_000_000, 1000))  # 1000 B a virtual second
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(too_slow(lambda: next(flow), 100, 0.4, clock), 1.0)

    asyncio.run(run())
