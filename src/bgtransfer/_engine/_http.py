"""Small readings of aiohttp objects that every driver (plain, segmented, upload) needs."""

from __future__ import annotations

import errno
import logging
import os

import aiohttp

__all__ = ["connect_reason", "lower_headers", "why"]

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
