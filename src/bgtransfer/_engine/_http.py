"""Small readings of aiohttp objects that every driver (plain, segmented, upload) needs, and
the one place where an aiohttp failure becomes a :class:`TransferError`."""

from __future__ import annotations

import errno
import logging
import os

import aiohttp

from bgtransfer._exceptions import (
    ConnectError,
    NetworkError,
    ReadError,
    TransferError,
    TransferTimeout,
)

__all__ = ["Failure", "body_failure", "connect_reason", "lower_headers", "request_failure", "why"]

log = logging.getLogger("bgtransfer")


def lower_headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
    """The response headers with lower-case names, repeated ones joined (RFC 9110 5.3)."""
    out: dict[str, str] = {}
    for k, v in resp.headers.items():
        key = k.lower()
        out[key] = f"{out[key]}, {v}" if key in out else v
    return out


def why(exc: BaseException) -> str:
    """A short reason for people; the full exception goes to the log."""
    log.debug("transfer interrupted", exc_info=exc)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "body cut short"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    if isinstance(exc, ConnectionResetError) or getattr(exc, "errno", None) == errno.ECONNRESET:
        return "connection reset"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:80]


def connect_reason(exc: aiohttp.ClientConnectorError) -> str:
    """ "cannot connect to host:port: connection refused", not aiohttp's full repr."""
    log.debug("connect failed", exc_info=exc)
    where = f"{exc.host}:{exc.port}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve {exc.host}: the name does not resolve"
    os_error = exc.os_error
    if os_error.errno:
        reason = os.strerror(os_error.errno)  # "Connection refused", not asyncio's wording
    else:
        reason = os_error.strerror or str(os_error) or type(os_error).__name__
    return f"cannot connect to {where}: {reason[:1].lower()}{reason[1:]}"


class Failure:
    """What a failed exchange means: the error and whether another try may help."""

    __slots__ = ("error", "retryable")

    def __init__(self, error: TransferError, *, retryable: bool = True) -> None:
        self.error = error
        self.retryable = retryable


def request_failure(
    exc: BaseException,
    request_timeout: float,
    *,
    silence: str = "no response within",
    lost: str = "connection lost before the response: {why}",
) -> Failure | None:
    """An exception raised while a request went out and its answer came back, or None if
    it is not a network failure (it propagates).

    ``silence`` and ``lost`` word the two common cases for the caller's stage (an upload
    sends its body inside the request, so "lost" there names the byte it got to).
    """
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Failure(ConnectError(connect_reason(exc)))
    if isinstance(exc, TimeoutError):
        return Failure(TransferTimeout(f"{silence} {request_timeout:g} s (request_timeout)"))
    if isinstance(exc, aiohttp.ClientResponseError):
        # A response aiohttp cannot parse (huge or malformed headers): retrying cannot help.
        return Failure(
            TransferError(f"invalid HTTP response from server: {exc.message}"), retryable=False
        )
    if isinstance(
        exc,
        aiohttp.ServerDisconnectedError
        | aiohttp.ClientPayloadError
        | aiohttp.ClientOSError  # a reset before the response
        | ConnectionError,
    ):
        return Failure(ReadError(lost.format(why=why(exc), name=type(exc).__name__)))
    if isinstance(exc, aiohttp.ClientError):
        return Failure(NetworkError(f"request failed: {exc!r}"))
    if isinstance(exc, OSError):
        return Failure(ReadError(lost.format(why=why(exc), name=type(exc).__name__)))
    return None


def body_failure(exc: BaseException, request_timeout: float, lost: str) -> Failure | None:
    """An exception raised while a response body was read (``lost`` says where), or None
    if it is not a network failure."""
    if isinstance(exc, TimeoutError):
        return Failure(TransferTimeout(f"no data for {request_timeout:g} s (request_timeout)"))
    if isinstance(exc, aiohttp.ClientError | ConnectionError | OSError):
        return Failure(ReadError(f"{lost} ({why(exc)})"))
    return None
