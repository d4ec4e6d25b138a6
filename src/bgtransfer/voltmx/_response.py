"""Reading a response the Volt MX way: responseType from Content-Type, a typed response."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable
from typing import Any

from bgtransfer.voltmx import constants

__all__ = ["charset", "decode", "detect_type", "header_map", "media_type", "split_set_cookie"]

_HIDDEN = frozenset({"set-cookie", "set-cookie2"})
_TEXT = frozenset({"application/text", "text/plain"})
_DOCUMENT = frozenset({"application/xml", "text/xml", "text/html"})
# Repeated Set-Cookie fields arrive joined with ", " (RFC 9110 5.3); an Expires date has a
# comma too, so split only where a new "name=" follows.
_COOKIE_SPLIT = re.compile(r",\s*(?=[^;,=\s]+=)")


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def detect_type(content_type: str | None) -> str:
    """The docs' table (httprequestobject, Constants): everything else is RAWDATA."""
    mt = media_type(content_type)
    if mt in _TEXT:
        return constants.HTTP_RESPONSE_TYPE_TEXT
    if mt == "application/json":
        return constants.HTTP_RESPONSE_TYPE_JSON
    if mt in _DOCUMENT or mt.endswith("+xml"):
        return constants.HTTP_RESPONSE_TYPE_DOCUMENT
    return constants.HTTP_RESPONSE_TYPE_RAWDATA


def charset(content_type: str | None) -> str:
    m = re.search(r"charset=\"?([\w.:-]+)", content_type or "", re.IGNORECASE)
    if m:
        try:
            return codecs.lookup(m.group(1)).name
        except LookupError:
            pass
    return "utf-8"


def decode(raw: bytes, response_type: str, content_type: str | None) -> Any:
    """``response`` per its type: parsed JSON (None when it does not parse), text, or bytes."""
    if response_type == constants.HTTP_RESPONSE_TYPE_RAWDATA:
        return raw
    text = raw.decode(charset(content_type), errors="replace")
    if response_type == constants.HTTP_RESPONSE_TYPE_JSON:
        try:
            return json.loads(text)
        except ValueError:
            return None
    return text


def header_map(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """getAllResponseHeaders(): name -> value, without Set-Cookie and Set-Cookie2."""
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        if key in _HIDDEN or key.startswith(":"):
            continue
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def split_set_cookie(pairs: Iterable[tuple[str, str]]) -> list[str]:
    values: list[str] = []
    for name, value in pairs:
        if name.lower() == "set-cookie":
            values.extend(v.strip() for v in _COOKIE_SPLIT.split(value) if v.strip())
    return values
