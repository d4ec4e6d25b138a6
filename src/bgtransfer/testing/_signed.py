"""Expiring signed URLs: ``/s/r/<name>`` and ``/s/gen/<size>`` under a token the server minted.

``/s/<path>`` serves ``/<path>`` exactly as the unsigned URL would (same ETag, same
bytes, the other knobs of the query apply), but only with a valid token in the query,
in one of two styles:

``amz`` (S3 presigned style)
    ``?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=...&X-Amz-Date=YYYYMMDDTHHMMSSZ``
    ``&X-Amz-Expires=N&X-Amz-SignedHeaders=host&X-Amz-Signature=<64 hex>``; it expires
    at X-Amz-Date + X-Amz-Expires.
``token``
    ``?token=<hex>&expires=<unix seconds>``; it expires at ``expires``.

403 (``text/plain``; an S3-style XML ``<Error>`` for the amz style) when the signature or
token is unknown, belongs to another path, or its expiry was edited; when the token has
expired (wall clock); and when the token's byte budget is spent. A response that would
go past the budget is cut (clean close) after the bytes that remain, so the link dies
mid-transfer as real expiring links do; every later request with the token gets 403.

Minting
    :meth:`FaultServer.sign_url` (``path``, ``expires_in`` seconds, ``max_bytes``,
    ``style``), or ``GET /sign?path=/r/<name>&expires_in=S&max_bytes=N&style=amz|token``
    which answers 200 JSON ``{"url": ..., "expires": <unix seconds>}``: the shape a
    refresh command prints. ``change=1`` first publishes a new version of the ``/r``
    resource (new bytes of the same length, new ETag and Last-Modified, as one
    ``etag_change`` bump), for a refresh that leads to a different representation.
    ``path`` may carry knobs of its own (``/gen/1M?seed=3``); they go into the URL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import hmac
import itertools
import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from bgtransfer.testing._downloads import Budget, Downloads
from bgtransfer.testing._http import DIGITS, HttpError, Request, send_simple
from bgtransfer.testing._state import State

STYLES: Final = ("amz", "token")
_AMZ_DATE: Final = "%Y%m%dT%H%M%SZ"
_AMZ_TAIL: Final = "/us-east-1/s3/aws4_request"


@dataclass
class Token:
    path: str  # the unsigned path it serves, e.g. /r/name
    expires: int  # unix seconds
    budget: Budget | None


class _Denied(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _amz_expiry(q: dict[str, str]) -> int:
    raw_date, raw_expires = q.get("X-Amz-Date", ""), q.get("X-Amz-Expires", "")
    try:
        date = dt.datetime.strptime(raw_date, _AMZ_DATE).replace(tzinfo=dt.UTC)
    except ValueError:
        raise HttpError(400, "bad X-Amz-Date") from None
    if not DIGITS.match(raw_expires):
        raise HttpError(400, "bad X-Amz-Expires")
    return int(date.timestamp()) + int(raw_expires)


def _url_expiry(q: dict[str, str]) -> tuple[str, int]:
    """(signature, expiry in unix seconds) the URL claims; 400 when malformed."""
    if "X-Amz-Signature" in q:
        return q["X-Amz-Signature"], _amz_expiry(q)
    if "token" in q:
        raw = q.get("expires", "")
        if not DIGITS.match(raw):
            raise HttpError(400, "bad expires")
        return q["token"], int(raw)
    raise _Denied("AccessDenied", "no signature or token in the query")


class Signer:
    """Mints tokens and guards ``/s/...`` with them."""

    def __init__(self, state: State, downloads: Downloads, base_for: Callable[[str], str]) -> None:
        self.state = state
        self.downloads = downloads
        self.base_for = base_for
        self._secret = secrets.token_bytes(16)
        self._nonce = itertools.count()
        self.tokens: dict[str, Token] = {}  # by signature / token value

    def mint(
        self,
        base: str,
        path: str,
        *,
        expires_in: float,
        max_bytes: int | None,
        style: str,
    ) -> tuple[str, int]:
        """A signed URL for ``path`` and its expiry (unix seconds)."""
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}")
        if not math.isfinite(expires_in):
            raise ValueError("expires_in must be a finite number of seconds")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        split = urlsplit(path)
        if not split.path.startswith(("/r/", "/gen/")) or split.scheme or split.netloc:
            raise ValueError("signed URLs serve /r/<name> or /gen/<size> paths")
        expires = math.floor(time.time() + expires_in)
        message = f"{split.path}\n{expires}\n{max_bytes}\n{next(self._nonce)}"
        signature = hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()
        budget = None if max_bytes is None else Budget(max_bytes)
        params = parse_qsl(split.query, keep_blank_values=True)
        if style == "amz":
            # X-Amz-Expires counts from X-Amz-Date; date it back so both stay whole seconds.
            lifetime = max(1, math.ceil(expires_in))
            date = dt.datetime.fromtimestamp(expires - lifetime, dt.UTC).strftime(_AMZ_DATE)
            params += [
                ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
                ("X-Amz-Credential", f"TESTKEY/{date[:8]}{_AMZ_TAIL}"),
                ("X-Amz-Date", date),
                ("X-Amz-Expires", str(lifetime)),
                ("X-Amz-SignedHeaders", "host"),
                ("X-Amz-Signature", signature),
            ]
        else:
            signature = signature[:32]
            params += [("token", signature), ("expires", str(expires))]
        with self.state.lock:
            self.tokens[signature] = Token(unquote(split.path), expires, budget)
        return f"{base}/s{split.path}?{urlencode(params)}", expires

    def served(self, url: str) -> int:
        """Body bytes served under the token of this signed URL."""
        q = dict(parse_qsl(urlsplit(url).query))
        token = self.tokens.get(q.get("X-Amz-Signature") or q.get("token", ""))
        if token is None:
            raise KeyError("no such signed URL")
        return 0 if token.budget is None else token.budget.spent

    def _check(self, req: Request, inner: str) -> Token:
        signature, claimed = _url_expiry(req.query)
        with self.state.lock:
            token = self.tokens.get(signature)
        if token is None or token.path != inner or token.expires != claimed:
            raise _Denied("SignatureDoesNotMatch", "the signature does not match")
        if time.time() >= token.expires:
            raise _Denied("AccessDenied", "Request has expired")
        if token.budget is not None and token.budget.remaining == 0:
            raise _Denied("AccessDenied", "Request has expired (byte budget spent)")
        return token

    async def serve(self, writer: asyncio.StreamWriter, req: Request, keep: bool) -> bool:
        inner = req.path[len("/s") :]
        try:
            token = self._check(req, inner)
        except _Denied as denied:
            if "X-Amz-Signature" in req.query:
                xml = (
                    f"<Error><Code>{denied.code}</Code><Message>{denied.message}</Message></Error>"
                )
                page = ('<?xml version="1.0" encoding="UTF-8"?>\n' + xml).encode()
                hdrs = [("Content-Type", "application/xml")]
            else:
                page, hdrs = f"{denied.message}\n".encode(), [("Content-Type", "text/plain")]
            await send_simple(writer, 403, page, hdrs, keep=keep, head_only=req.method == "HEAD")
            return keep
        unsigned = dataclasses.replace(req, path=inner)
        return await self.downloads.serve(writer, unsigned, keep, budget=token.budget)

    async def serve_mint(self, writer: asyncio.StreamWriter, req: Request, keep: bool) -> bool:
        """``GET /sign?path=...``: a fresh signed URL as JSON."""
        q = req.query
        path = q.get("path", "")
        try:
            expires_in = float(q.get("expires_in", "300"))
            max_bytes = int(q["max_bytes"]) if "max_bytes" in q else None
        except ValueError:
            raise HttpError(400, "bad expires_in or max_bytes") from None
        if q.get("change") not in (None, "0", ""):
            self._bump(urlsplit(path).path)
        try:
            url, expires = self.mint(
                self.base_for(req.host),
                path,
                expires_in=expires_in,
                max_bytes=max_bytes,
                style=q.get("style", "amz"),
            )
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        body = json.dumps({"url": url, "expires": expires}).encode()
        hdrs = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        await send_simple(writer, 200, body, hdrs, keep=keep, head_only=req.method == "HEAD")
        return keep

    def _bump(self, path: str) -> None:
        if not path.startswith("/r/"):
            raise HttpError(400, "change=1 works on /r/<name> paths")
        with self.state.lock:
            res = self.state.resources.get(path[len("/r/") :])
            if res is None:
                raise HttpError(404, f"no resource at {path!r}")
            res.bumps += 1
