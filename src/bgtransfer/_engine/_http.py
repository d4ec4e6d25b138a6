"""Small readings of aiohttp objects that every driver (plain, segmented, upload) needs, and
the one place where an aiohttp failure becomes a :class:`TransferError`."""

from __future__ import annotations

import errno
import logging
import os
import ssl
import threading

import aiohttp

from bgtransfer._exceptions import (
    ConnectError,
    NetworkError,
    ReadError,
    TLSError,
    TransferError,
    TransferTimeout,
)
from bgtransfer._protocol._task import Spec

__all__ = [
    "Failure",
    "body_failure",
    "connect_reason",
    "lower_headers",
    "request_failure",
    "tls_for",
    "why",
]

# One SSL context per distinct CA bundle (by path and the file's identity, so an edited
# bundle is read again): aiohttp pools connections per context, so tasks that name the
# same bundle share connections and TLS sessions, and the PEM is parsed once.
_MAX_CONTEXTS = 64
_contexts: dict[tuple[str, int, int, int], ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def tls_for(spec: Spec) -> ssl.SSLContext | bool:
    """What aiohttp's ``ssl=`` gets for this task: True (its default: the system store or
    SSL_CERT_FILE, fully verified) or a verifying context over the task's CA bundle.

    TLSError when the bundle cannot be read or holds no certificate.
    """
    path = spec.ca_bundle
    if path is None:
        return True
    try:
        st = os.stat(path)
    except OSError as exc:
        raise TLSError(f"cannot read the CA bundle {path}: {exc.strerror}") from None
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    with _contexts_lock:
        ctx = _contexts.get(key)
    if ctx is not None:
        return ctx
    try:
        # create_default_context: CERT_REQUIRED and check_hostname, as for the system store.
        ctx = ssl.create_default_context(cafile=path)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise TLSError(f"the CA bundle {path} holds no usable certificate: {exc}") from None
    with _contexts_lock:
        if len(_contexts) >= _MAX_CONTEXTS:
            _contexts.clear()
        return _contexts.setdefault(key, ctx)


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
    if isinstance(exc, TLSError):
        return Failure(exc, retryable=False)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        # Another try meets the same certificate: fail now and say how to trust it.
        cert = exc.certificate_error
        reason = getattr(cert, "verify_message", None) or str(cert)
        return Failure(
            TLSError(
                f"the TLS certificate of {exc.host}:{exc.port} does not verify: {reason} "
                "(a private CA: pass its PEM file as ca_bundle / --cacert)"
            ),
            retryable=False,
        )
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
