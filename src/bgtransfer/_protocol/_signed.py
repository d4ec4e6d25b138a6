"""Signed URLs that expire mid-transfer: when to ask the caller's refresh hook for a new one,
what a hook may answer, and whether the bytes already fetched survive the switch.

A GitHub release asset redirects to an S3 URL valid for 300 s (aria2#2197): a large file
outlives it. The URL itself says when it dies, so the engine can refresh *before* the 403
(:func:`signed_url_expiry`, :func:`refresh_due`) and after one (:func:`refresh_on_status`).
Pure: the time is always passed in, as epoch seconds.
"""

from __future__ import annotations

import calendar
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._ranges import _strong_etag
from bgtransfer._protocol._validate import check_headers, check_url

__all__ = [
    "DEFAULT_MARGIN",
    "MAX_REFRESHES",
    "MAX_REFRESHES_IN_A_ROW",
    "REFRESH_STATUS",
    "Keep",
    "Refresh",
    "RefreshAction",
    "Representation",
    "keep_bytes",
    "parse_refresh_output",
    "parse_refresh_result",
    "redact_signature",
    "refresh_due",
    "refresh_on_status",
    "signed_url_expiry",
]

# Refresh this long before the URL's own expiry: a request started 1 s before it may be
# refused, and a clock a little off would make it worse.
DEFAULT_MARGIN = 30.0
# A hook that keeps handing out URLs the server refuses must not loop forever.
MAX_REFRESHES = 20
MAX_REFRESHES_IN_A_ROW = 2  # refreshes with no byte received between them
REFRESH_STATUS = frozenset({401, 403, 410})
_MAX_OUTPUT = 64 * 1024  # a refresh command's stdout: a URL and a few headers

_COMPACT_TIME = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z\Z")
# Azure accepts a date, minutes or seconds, with optional fractions, always UTC.
_ISO_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?Z)?\Z")
# Query parameters that are secrets: never shown in errors, logs or the attempt history.
_SECRETS = frozenset(
    {
        "x-amz-signature",
        "x-amz-security-token",
        "x-amz-credential",
        "x-goog-signature",
        "x-goog-credential",
        "signature",
        "sig",
        "policy",
        "key-pair-id",
        "googleaccessid",
        "awsaccesskeyid",
        "token",
    }
)


def _epoch(parts: tuple[str | None, ...]) -> float | None:
    """UTC fields (missing ones 0) to epoch seconds; None for a month 13 or an hour 25."""
    year, month, day, hour, minute, second = (int(p) if p else 0 for p in parts)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second)))


def _compact(value: str | None) -> float | None:
    match = _COMPACT_TIME.match(value or "")
    return None if match is None else _epoch(match.groups())


def _seconds(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() and len(value) <= 12 else None


def signed_url_expiry(url: str) -> float | None:
    """The epoch second at which a signed URL stops working, or None when it carries no
    expiry we know (it may still expire: then only a 401/403 will tell).

    AWS SigV4 and GCS V4: ``X-Amz-Date``/``X-Goog-Date`` (``20130721T201207Z``) plus
    ``X-Amz-Expires``/``X-Goog-Expires`` seconds; S3 SigV2, GCS V2 and CloudFront canned
    policies: ``Expires=<epoch>`` beside a ``Signature`` (or a ``token``, as BunnyCDN and
    the project's test server sign); Azure SAS: ``se=<ISO 8601 UTC>``
    beside a ``sig``. With several, the earliest wins."""
    try:
        query = urlsplit(url).query
    except ValueError:
        return None
    params = {k.lower(): v for k, v in parse_qsl(query, keep_blank_values=True)}
    found: list[float] = []
    for vendor in ("amz", "goog"):
        start = _compact(params.get(f"x-{vendor}-date"))
        lifetime = _seconds(params.get(f"x-{vendor}-expires"))
        if start is not None and lifetime is not None:
            found.append(start + lifetime)
    legacy = _seconds(params.get("expires"))
    if legacy is not None and ("signature" in params or "token" in params):
        found.append(float(legacy))
    azure = _ISO_TIME.match(params.get("se", ""))
    if azure is not None and "sig" in params:
        when = _epoch(azure.groups())
        if when is not None:
            found.append(when)
    return min(found) if found else None


def refresh_due(expiry: float | None, now: float, margin: float = DEFAULT_MARGIN) -> bool:
    """Whether to refresh before the next request (the URL dies within ``margin``)."""
    return expiry is not None and now >= expiry - margin


class RefreshAction(Enum):
    REFRESH = "refresh"  # call the hook, then retry with what it returns
    NONE = "none"  # not a case for a refresh: the status is handled as usual
    EXHAUSTED = "exhausted"  # it would be, but the bound is reached: fail with the status


def refresh_on_status(
    status: int,
    *,
    has_hook: bool,
    had_response: bool,
    url_expired: bool = False,
    refreshes: int = 0,
    refreshes_in_a_row: int = 0,
) -> RefreshAction:
    """Whether an error answer calls for the refresh hook.

    A 401/403/410 means "expired" only when this task was let in before (``had_response``:
    it got a success or bytes with these credentials) or the URL's own expiry has passed;
    a first-request 403 on a fresh URL is a real refusal and fails as usual. S3 and GCS
    answer an expired signature with 400 too, so a 400 counts when the URL says it expired.
    """
    if not has_hook:
        return RefreshAction.NONE
    auth = status in REFRESH_STATUS and (had_response or url_expired)
    if not (auth or (status == 400 and url_expired)):
        return RefreshAction.NONE
    if refreshes >= MAX_REFRESHES or refreshes_in_a_row >= MAX_REFRESHES_IN_A_ROW:
        return RefreshAction.EXHAUSTED
    return RefreshAction.REFRESH


@dataclass(frozen=True, slots=True)
class Refresh:
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    expires: float | None = None  # when the hook says the new URL dies (epoch seconds)


_KEYS = frozenset({"url", "headers", "expires"})


def parse_refresh_result(obj: object) -> Refresh:
    """A refresh hook's answer: ``{"url": str, "headers": {str: str}, "expires": epoch}``
    (``headers`` and ``expires`` optional; ``expires`` is for URLs that do not say it
    themselves). Unknown keys are refused, so that a typo (``"header"``) is not silently
    ignored."""
    if not isinstance(obj, Mapping):
        raise InvalidRequest(
            f'a refresh must return {{"url": ..., "headers": {{...}}}}, not {type(obj).__name__}'
        )
    unknown = sorted(str(k) for k in obj if k not in _KEYS)
    if unknown:
        raise InvalidRequest(
            f"a refresh result has unknown keys {unknown} (allowed: url, headers, expires)"
        )
    if "url" not in obj:
        raise InvalidRequest('a refresh result must have a "url"')
    url = check_url(obj["url"])
    headers = obj.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise InvalidRequest(f'a refresh result\'s "headers" must be an object, not {headers!r}')
    expires = obj.get("expires")
    if expires is not None and (
        isinstance(expires, bool)
        or not isinstance(expires, int | float)
        or not (math.isfinite(expires) and expires >= 0)
    ):
        raise InvalidRequest(
            f'a refresh result\'s "expires" must be epoch seconds, not {expires!r}'
        )
    return Refresh(url, tuple(check_headers(headers)), None if expires is None else float(expires))


def parse_refresh_output(stdout: bytes | str) -> Refresh:
    """What a refresh command printed: the JSON object of :func:`parse_refresh_result`, or
    just a URL on one line (what ``aws s3 presign`` and ``gcloud storage sign-url`` print)."""
    if len(stdout) > _MAX_OUTPUT:
        raise InvalidRequest(f"a refresh command printed more than {_MAX_OUTPUT} bytes")
    try:
        text = stdout.decode("utf-8") if isinstance(stdout, bytes) else stdout
    except UnicodeDecodeError:
        raise InvalidRequest("a refresh command printed something that is not UTF-8") from None
    text = text.strip()
    if not text:
        raise InvalidRequest("a refresh command printed nothing (expected a URL or JSON)")
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise InvalidRequest(f"a refresh command printed invalid JSON: {exc}") from None
        return parse_refresh_result(obj)
    if "\n" in text:
        raise InvalidRequest("a refresh command printed several lines: expected one URL or JSON")
    return Refresh(check_url(text))


def redact_signature(url: str) -> str:
    """``url`` with its signature, credential and token query values replaced by ``***``,
    for errors and the attempt history (a signed URL is a bearer secret until it expires)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if not parts.query:
        return url
    shown = []
    for item in parts.query.split("&"):
        key, eq, _value = item.partition("=")
        secret = key.lower() in _SECRETS or key.lower().endswith("signature")
        shown.append(f"{key}{eq}***" if secret and eq else item)
    return urlunsplit(parts._replace(query="&".join(shown)))


@dataclass(frozen=True, slots=True)
class Representation:
    """What a response says about the bytes it serves (from a 200, or a 206's total)."""

    length: int | None
    etag: str | None = None
    digests: Mapping[str, bytes] = field(default_factory=dict)  # Repr-Digest, by algorithm


class Keep(Enum):
    KEEP = "keep"  # same representation: go on from the offset
    KEEP_VERIFY = "keep-verify"  # same length, and the caller's sha256 checks the result
    RESTART = "restart"  # another representation, or no way to tell: start from byte 0


def keep_bytes(
    old: Representation, new: Representation, *, caller_sha256: bool
) -> tuple[Keep, str]:
    """Whether bytes fetched from the old URL may be completed from the new one, and why.

    Equal strong ETags or equal Repr-Digests prove it; a differing digest or length
    disproves it. Differing ETags do not: a refreshed URL may point at another CDN or
    region whose tags differ for the same bytes, so then (as with no validator at all) the
    bytes are kept only when the caller's sha256 will check the finished file."""
    if old.length is not None and new.length is not None and old.length != new.length:
        return Keep.RESTART, f"the length changed from {old.length} to {new.length}"
    common = sorted(set(old.digests) & set(new.digests))
    changed = [name for name in common if old.digests[name] != new.digests[name]]
    if changed:
        return Keep.RESTART, f"the {changed[0]} Repr-Digest changed"
    if common:
        return Keep.KEEP, f"the same {common[0]} Repr-Digest"
    old_tag, new_tag = _strong_etag(old.etag), _strong_etag(new.etag)
    if old_tag is not None and old_tag == new_tag:
        return Keep.KEEP, f"the same strong ETag {old_tag}"
    same_length = old.length is not None and old.length == new.length
    if caller_sha256 and same_length:
        return Keep.KEEP_VERIFY, "the same length; the caller's sha256 will check the file"
    if old_tag is not None and new_tag is not None:
        return Keep.RESTART, f"the ETag changed from {old_tag} to {new_tag}"
    return Keep.RESTART, "nothing shows the new URL serves the same bytes"
