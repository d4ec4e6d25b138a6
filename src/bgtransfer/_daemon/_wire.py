"""Reading requests on the control socket strictly: bounded in size, depth and time, and every
error answered as JSON ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from aiohttp import web

from bgtransfer._daemon._paths import MAX_BODY
from bgtransfer._exceptions import InvalidRequest
from bgtransfer._requests import integer, number

__all__ = [
    "BODY_TIMEOUT",
    "HEADER_TIMEOUT",
    "MAX_BODY",
    "error_response",
    "http_error_code",
    "json_body",
    "query_int",
    "query_number",
]

# A connection must deliver its request headers within this time (aiohttp's keep-alive timer
# runs from the moment a connection is made until a request arrives), and a body within
# BODY_TIMEOUT: a client that trickles bytes cannot hold a handler for ever.
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
# Numbers end up in SQLite INTEGER columns: 64 bits, signed.
_INT_RANGE = range(-(2**63), 2**63)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    resp = web.json_response({"error": {"code": code, "message": message}}, status=status)
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def http_error_code(status: int) -> str:
    return _HTTP_CODES.get(status, "internal_error" if status >= 500 else "http_error")


def _bad_constant(name: str) -> Any:
    raise InvalidRequest(f"bad number in the request: {name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidRequest(f"bad number in the request: {text[:40]} is out of range")
    return value


def _int(text: str) -> int:
    value = int(text) if len(text) <= 25 else None
    if value is None or value not in _INT_RANGE:
        raise InvalidRequest(f"bad number in the request: {text[:40]} is out of range")
    return value


async def json_body(request: web.Request) -> Any:
    """The request's JSON body: at most MAX_BODY bytes (413 beyond), read within
    BODY_TIMEOUT (408), finite numbers only, not nested deeper than the parser's stack."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            raw = await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="the request body did not arrive in time") from None
    try:
        return json.loads(raw, parse_float=_float, parse_int=_int, parse_constant=_bad_constant)
    except RecursionError:
        raise InvalidRequest("the JSON document is nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the body is not UTF-8 JSON: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from None


def query_number(request: web.Request, name: str, default: float) -> float:
    """A finite number from the query string, or ``default``."""
    return number(request.query, name, default)


def query_int(request: web.Request, name: str, default: int) -> int:
    """An integer from the query string, or ``default``."""
    return integer(request.query, name, default)
