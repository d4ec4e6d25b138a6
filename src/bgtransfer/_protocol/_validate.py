"""Checks of caller input, done before any task exists (the boundary of the API)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._redact import redact

__all__ = [
    "check_headers",
    "check_method",
    "check_sha256",
    "check_timeout",
    "check_url",
]

# RFC 9110 §5.6.2 token characters.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}\Z")
# Headers the engine owns: letting a caller set them would break resume validation.
_ENGINE_HEADERS = frozenset(
    {"range", "if-range", "accept-encoding", "content-length", "transfer-encoding", "host"}
)

HeaderInput = Mapping[str, str] | Iterable[tuple[str, str]] | None


def check_url(url: object) -> str:
    if not isinstance(url, str):
        raise InvalidRequest(f"URL must be a string, not {type(url).__name__}: {url!r}")
    shown = repr(redact(url))  # a password in the URL is never echoed
    if not url or any(ord(c) <= 0x20 or 0x7F <= ord(c) <= 0x9F for c in url):
        raise InvalidRequest(f"URL contains whitespace or control characters: {shown}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidRequest(f"URL cannot be parsed ({exc}): {shown}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidRequest(
            f"URL scheme must be http or https, not {parts.scheme or 'missing'!r}: {shown}"
        )
    if not parts.hostname:
        raise InvalidRequest(f"URL has no host: {shown}")
    if parts.port == 0:
        raise InvalidRequest(f"URL port 0 cannot be connected to: {shown}")
    return url


def check_method(method: object) -> str:
    if not isinstance(method, str) or not _TOKEN.match(method):
        raise InvalidRequest(f"HTTP method is not a valid token: {method!r}")
    return method.upper()


def check_headers(headers: HeaderInput) -> list[tuple[str, str]]:
    if headers is None:
        return []
    items: list[object] = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    out: list[tuple[str, str]] = []
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise InvalidRequest(f"header must be a (name, value) pair: {item!r}")
        name, value = item[0], item[1]
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise InvalidRequest(f"header name is not a valid HTTP token: {name!r}")
        if not isinstance(value, str):
            raise InvalidRequest(f"header {name!r} value must be a string: {value!r}")
        if any(c in value for c in "\r\n\0"):
            raise InvalidRequest(f"header {name!r} value contains CR, LF or NUL: {value!r}")
        if name.lower() in _ENGINE_HEADERS:
            raise InvalidRequest(
                f"header {name!r} is managed by the engine (resume needs it) and cannot be set"
            )
        out.append((name, value.strip()))
    return out


def check_timeout(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{name} must be a number of seconds, not {value!r}")
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise InvalidRequest(f"{name} must be a positive finite number of seconds, not {value!r}")
    return v


def check_sha256(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.match(value.strip()):
        raise InvalidRequest(f"sha256 must be 64 hexadecimal characters, not {value!r}")
    return value.strip().lower()
