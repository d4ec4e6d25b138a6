"""Which redirect targets are followed, and the origin that decides credential forwarding."""

from __future__ import annotations

import pytest

from bgtransfer._protocol._redirects import (
    REDIRECT_STATUS,
    SENSITIVE_HEADERS,
    origin,
    resolve_redirect,
)

BASE = "http://a.example/dir/file?x=1"
SECURE = "https://a.example/dir/file"


@pytest.mark.parametrize(
    ("current", "location", "expected"),
    [
        (BASE, "other", "http://a.example/dir/other"),
        (BASE, "/abs/path", "http://a.example/abs/path"),
        (BASE, "../up", "http://a.example/up"),
        (BASE, "./same", "http://a.example/dir/same"),
        (BASE, "?q=2", "http://a.example/dir/file?q=2"),
        (BASE, "//b.example/y", "http://b.example/y"),
        (SECURE, "//b.example/y", "https://b.example/y"),
        (BASE, "  /padded  ", "http://a.example/padded"),
        (BASE, "http://b.example:8080/z", "http://b.example:8080/z"),
        (BASE, "https://b.example/z", "https://b.example/z"),  # http -> https is fine
        (SECURE, "https://b.example/z", "https://b.example/z"),
        (SECURE, "/next", "https://a.example/next"),
        (BASE, "HTTPS://B.example/z", "HTTPS://B.example/z"),
    ],
)
def test_followed(current: str, location: str, expected: str) -> None:
    assert resolve_redirect(current, location) == (expected, "")


@pytest.mark.parametrize(
    "location",
    [
        "file:///etc/passwd",
        "gopher://evil.example:70/_payload",
        "ftp://files.example/pub/x",
        "javascript:alert(1)",
        "data:text/plain,hello",
        "mailto:someone@example.com",
        "ws://a.example/socket",
    ],
)
@pytest.mark.parametrize("current", [BASE, SECURE])
def test_non_http_targets_refused(current: str, location: str) -> None:
    target, reason = resolve_redirect(current, location)
    assert target is None
    assert "non-http(s)" in reason
    assert location.split(":", 1)[0] in reason


@pytest.mark.parametrize(
    "location", ["http://b.example/x", "HTTP://a.example/dir/file", "http://a.example:80/"]
)
def test_https_to_http_downgrade_refused(location: str) -> None:
    target, reason = resolve_redirect(SECURE, location)
    assert target is None
    assert "downgrade" in reason


def test_https_to_http_refused_even_on_the_same_host() -> None:
    target, reason = resolve_redirect("https://a.example:443/f", "http://a.example:443/f")
    assert target is None
    assert "downgrade" in reason


@pytest.mark.parametrize("location", [None, "", "   ", "\t"])
def test_missing_location_refused(location: str | None) -> None:
    assert resolve_redirect(BASE, location) == (None, "redirect without a Location header")


@pytest.mark.parametrize(
    "location", ["http://b.example:99999/", "http://b.example:port/", "http://[::1/"]
)
def test_unparsable_location_refused(location: str) -> None:
    target, reason = resolve_redirect(BASE, location)
    assert target is None
    assert "unparsable" in reason
    assert repr(location) in reason


def test_location_without_host_refused() -> None:
    target, reason = resolve_redirect(SECURE, "http:///no-host")
    assert target is None
    assert reason  # refused either as a downgrade or for the missing host


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.com/x", ("http", "example.com", 80)),
        ("https://example.com/x", ("https", "example.com", 443)),
        ("http://example.com:8080/x", ("http", "example.com", 8080)),
        ("https://example.com:8443", ("https", "example.com", 8443)),
        ("HTTP://EXAMPLE.COM/x", ("http", "example.com", 80)),
        ("https://user:pw@Example.com/x", ("https", "example.com", 443)),
        ("http://[::1]:81/", ("http", "::1", 81)),
    ],
)
def test_origin(url: str, expected: tuple[str, str, int]) -> None:
    assert origin(url) == expected


def test_origin_default_ports_equal_explicit_ones() -> None:
    assert origin("http://example.com/") == origin("http://example.com:80/other")
    assert origin("https://example.com/") == origin("https://EXAMPLE.com:443/")
    assert origin("http://example.com/") != origin("https://example.com/")
    assert origin("https://example.com/") != origin("https://example.com:8443/")
    assert origin("https://example.com/") != origin("https://sub.example.com/")


def test_constants() -> None:
    assert frozenset({301, 302, 303, 307, 308}) == REDIRECT_STATUS
    assert {"authorization", "cookie", "proxy-authorization"} <= SENSITIVE_HEADERS
    assert all(name == name.lower() for name in SENSITIVE_HEADERS)
