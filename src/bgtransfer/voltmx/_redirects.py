"""Redirects of requests with a body: send() follows 301, 302, 303, 307 and 308 (docs).

A GET is a download and the engine follows its redirects itself; an upload never re-sends a
body elsewhere on its own, so the request object does it, as fetch() would: 303 (and 301/302
after a POST) becomes a GET without the body, 307/308 send the same method and body again.
Credentials (Authorization, Cookie) do not follow to another origin; the cookie store's own
cookies for the new URL do, after the redirect's Set-Cookie went in.
"""

from __future__ import annotations

import os
from urllib.parse import urljoin, urlsplit

import bgtransfer
from bgtransfer.voltmx import _cookies
from bgtransfer.voltmx._exchange import Exchange

__all__ = ["MAX_HOPS", "follow"]

MAX_HOPS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def follow(ex: Exchange, session: bgtransfer.Session, base: str) -> Exchange | None:
    """The exchange that carries on after ``ex``'s redirect, or None (not a redirect to
    follow: the app sees the 3xx)."""
    task = ex.task
    status = task.response_status
    if task.kind != "upload" or status not in _REDIRECTS or ex.hops >= MAX_HOPS:
        return None
    if not ex.options:
        return None  # re-attached by a later process: the request as sent is not known
    location = task.response_headers.get("Location")
    if not location:
        return None
    url = urljoin(task.url, location)
    if urlsplit(url).scheme.lower() not in ("http", "https") or not urlsplit(url).hostname:
        return None
    _cookies.store(ex.home, task.url, list(task.response_headers.items()))
    keep_body = status in (307, 308) or (status in (301, 302) and ex.method != "POST")
    method = ex.method if keep_body or ex.method == "HEAD" else "GET"
    dropped = {"cookie"}
    if _origin(url) != _origin(task.url):
        dropped.add("authorization")
    if not keep_body:
        dropped |= {"content-type", "content-length"}
    sent = [(k, v) for k, v in ex.headers if k.lower() not in dropped]
    cookie = _cookies.cookie_header(ex.home, url)
    if cookie:
        sent.append(("Cookie", cookie))
    if method == "GET":
        nxt = Exchange(session.download(url, base + ".body", headers=sent, **ex.options), ex.home)
    else:
        body_file = ex.body_file if keep_body else None
        if body_file is None or not os.path.exists(body_file):
            body_file = base + ".req"
            open(body_file, "wb").close()  # HEAD, or a body that is not sent again
        upload = session.upload(
            body_file, url, method=method, headers=sent, response_path=base + ".body",
            **ex.options,
        )  # fmt: skip
        nxt = Exchange(upload, ex.home, body_file, base + ".body", ex.has_body and keep_body)
        nxt.total, nxt.sent = ex.total, ex.sent  # progress never goes back
    nxt.method, nxt.headers, nxt.options = method, ex.headers, ex.options
    nxt.hops, nxt.check = ex.hops + 1, ex.check
    return nxt
