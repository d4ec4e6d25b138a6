"""The app's cookie store (``voltmx.net.getCookies`` / ``clearCookies``), kept in the home.

One Netscape-format file per home (``<home>/voltmx/cookies.txt``, mode 0600) under an
``flock``, so foreground requests, background requests and later processes share it, as
HttpRequest calls of one Volt MX app share its cookie store. Session cookies are kept until
cleared: a Python process is not an app's lifetime.
"""

from __future__ import annotations

import contextlib
import email.message
import email.utils
import fcntl
import http.cookiejar
import os
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

from bgtransfer.voltmx import constants
from bgtransfer.voltmx._errors import VoltMXError, bad_type
from bgtransfer.voltmx._response import split_set_cookie

__all__ = ["clear", "cookie_header", "get", "put", "store"]


def _path(home: str) -> str:
    directory = os.path.join(home, "voltmx")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return os.path.join(directory, "cookies.txt")


@contextlib.contextmanager
def _jar(home: str, *, write: bool) -> Iterator[http.cookiejar.MozillaCookieJar]:
    path = _path(home)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
        jar = http.cookiejar.MozillaCookieJar(path)
        if os.path.exists(path):
            with contextlib.suppress(http.cookiejar.LoadError, OSError):
                jar.load(ignore_discard=True, ignore_expires=False)
        yield jar
        if write:
            tmp = f"{path}.{os.getpid()}.tmp"
            jar.save(tmp, ignore_discard=True)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)


class _Response:
    """What ``CookieJar.extract_cookies`` reads: ``info()`` with the Set-Cookie fields."""

    def __init__(self, values: list[str]) -> None:
        self._msg = email.message.Message()
        for v in values:
            self._msg["Set-Cookie"] = v

    def info(self) -> email.message.Message:
        return self._msg


def _valid(url: object) -> str | None:
    if not isinstance(url, str):
        return None
    parts = urlsplit(url)
    return url if parts.scheme in ("http", "https") and parts.hostname else None


def cookie_header(home: str, url: str) -> str | None:
    req = urllib.request.Request(url)
    with _jar(home, write=False) as jar:
        jar.add_cookie_header(req)
    return req.get_header("Cookie")


def store(home: str, url: str, headers: Iterable[tuple[str, str]]) -> None:
    values = split_set_cookie(headers)
    if not values:
        return
    with _jar(home, write=True) as jar:
        jar.extract_cookies(_Response(values), urllib.request.Request(url))  # type: ignore[arg-type]


def get(home: str, url: object, fmt: object = constants.COOKIES_IN_STRING) -> Any:
    """``voltmx.net.getCookies(url, cookieFormat)``: a list, or None for a bad URL or none."""
    if fmt not in (constants.COOKIES_IN_STRING, constants.COOKIES_IN_JSON):
        raise bad_type("cookieFormat must be constants.COOKIES_IN_STRING or _JSON", fmt)
    valid = _valid(url)
    if valid is None:
        return None
    parts = urlsplit(valid)
    host, path = (parts.hostname or "").lower(), parts.path or "/"
    with _jar(home, write=False) as jar:
        cookies = [
            c
            for c in jar
            if not c.is_expired()
            and _domain_ok(c, host)
            and path.startswith(c.path)
            and (parts.scheme == "https" or not c.secure)
        ]
    if not cookies:
        return None
    if fmt == constants.COOKIES_IN_JSON:
        return [_as_dict(c) for c in cookies]
    return [_as_string(c) for c in cookies]


def put(home: str, url: object, cookies: object) -> None:
    """``voltmx.net.setCookies(url, cookiesList)``: dicts with at least Name, Value, Domain
    and Path (docs); a cookie with the same name, domain and path is replaced."""
    if _valid(url) is None and url not in (None, ""):
        raise VoltMXError(1005, "invalid input url")
    if not isinstance(cookies, list | tuple):
        raise bad_type("cookiesList must be an array of cookie objects", cookies)
    made = []
    for c in cookies:
        if not isinstance(c, dict) or not all(
            isinstance(c.get(k), str) for k in ("Name", "Value", "Domain", "Path")
        ):
            raise bad_type("a cookie needs string Name, Value, Domain and Path", c)
        expires = c.get("ExpiresDate")
        if expires is not None and (
            isinstance(expires, bool) or not isinstance(expires, int | float)
        ):
            raise bad_type("ExpiresDate must be milliseconds since the epoch", expires)
        domain = c["Domain"]
        made.append(
            http.cookiejar.Cookie(
                int(c.get("Version", 0)),
                c["Name"],
                c["Value"],
                None,
                False,
                domain,
                True,
                domain.startswith("."),
                c["Path"],
                True,
                bool(c.get("Secure", False)),
                None if expires is None else int(expires / 1000),
                expires is None,
                None,
                None,
                {},
            )
        )
    with _jar(home, write=True) as jar:
        for cookie in made:
            jar.set_cookie(cookie)


def clear(home: str, url: object = None, names: object = None) -> None:
    """``voltmx.net.clearCookies(url, cookieNames)``; error 1005 for a URL that is not valid."""
    if names is not None and (
        not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names)
    ):
        raise bad_type("cookieName must be an array of strings", names)
    if url is None:
        with _jar(home, write=True) as jar:
            jar.clear()
        return
    valid = _valid(url)
    if valid is None:
        raise VoltMXError(1005, "invalid input url")
    parts = urlsplit(valid)
    host = (parts.hostname or "").lower()
    https = parts.scheme == "https"
    with _jar(home, write=True) as jar:
        for c in list(jar):
            domain = c.domain.lstrip(".").lower()
            if not (host == domain or host.endswith("." + domain)):
                continue
            if c.secure and not https:
                continue  # an http URL clears only the cookies stored for http
            if names is not None and c.name not in names:
                continue
            jar.clear(c.domain, c.path, c.name)


def _domain_ok(c: http.cookiejar.Cookie, host: str) -> bool:
    domain = c.domain.lstrip(".").lower()
    return host == domain or (c.domain.startswith(".") and host.endswith("." + domain))


def _as_string(c: http.cookiejar.Cookie) -> str:
    parts = [f"{c.name}={c.value or ''}", f"Domain={c.domain}", f"Path={c.path}"]
    if c.expires is not None:
        parts.append(f"Expires={email.utils.formatdate(c.expires, usegmt=True)}")
    if c.secure:
        parts.append("Secure")
    if c.has_nonstandard_attr("HttpOnly"):
        parts.append("HttpOnly")
    return "; ".join(parts)


def _as_dict(c: http.cookiejar.Cookie) -> dict[str, Any]:
    return {
        "Version": c.version,
        "Name": c.name,
        "Value": c.value,
        "ExpiresDate": None if c.expires is None else c.expires * 1000,
        "Domain": c.domain,
        "Path": c.path,
        "Secure": c.secure,
    }
