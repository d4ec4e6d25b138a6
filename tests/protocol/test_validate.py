"""Caller input is checked at the API boundary; each refusal is an InvalidRequest naming it."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from bgtransfer._exceptions import InvalidRequest, TransferError
from bgtransfer._protocol._validate import (
    check_headers,
    check_method,
    check_sha256,
    check_timeout,
    check_url,
)

SHA = "0123456789abcdef" * 4


def test_invalid_request_is_a_value_error_and_a_transfer_error() -> None:
    assert issubclass(InvalidRequest, ValueError)
    assert issubclass(InvalidRequest, TransferError)
    with pytest.raises(ValueError, match="scheme"):
        check_url("ftp://example.com/x")


# -- URL ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/",
        "https://example.com/a/b?c=d#e",
        "HTTPS://EXAMPLE.COM/x",
        "http://example.com:8080/x",
        "http://127.0.0.1:1/",
        "http://[::1]:8080/x",
        "https://user:pw@example.com/x",
        "http://example.com/%20encoded",
    ],
)
def test_url_accepted(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://example.com/",
        "ws://example.com/",
        "javascript:alert(1)",
        "example.com/x",
        "//example.com/x",
    ],
)
def test_url_non_http_scheme(url: str) -> None:
    with pytest.raises(InvalidRequest, match="scheme") as exc:
        check_url(url)
    assert repr(url) in str(exc.value)


@pytest.mark.parametrize("url", ["http://", "https:///path", "http://:80/", "http://user@/x"])
def test_url_without_host(url: str) -> None:
    with pytest.raises(InvalidRequest, match="no host") as exc:
        check_url(url)
    assert repr(url) in str(exc.value)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://example.com/a b",
        " http://example.com/",
        "http://example.com/\t",
        "http://example.com/\r\nX-Injected: 1",
        "http://example.com/\n",
        "http://exa\x00mple.com/",
        "http://example.com/\x7f",
        "http://example.com/\x1b[31m",
    ],
)
def test_url_whitespace_or_control_characters(url: str) -> None:
    with pytest.raises(InvalidRequest, match="whitespace or control") as exc:
        check_url(url)
    assert repr(url) in str(exc.value)


@pytest.mark.parametrize("url", ["http://exa\x85mple.com/", "http://example.com/a\x9fb"])
def test_url_c1_control_characters(url: str) -> None:
    # U+0080..U+009F are control characters too (Unicode category Cc); urlsplit() silently
    # keeps them, so a URL with one must be refused like its C0 siblings.
    with pytest.raises(InvalidRequest) as exc:
        check_url(url)
    assert repr(url) in str(exc.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com:99999/",
        "http://example.com:port/",
        "http://example.com:-1/",
        "http://[::1/",
    ],
)
def test_url_bad_port_or_unparsable(url: str) -> None:
    with pytest.raises(InvalidRequest, match="cannot be parsed") as exc:
        check_url(url)
    assert repr(url) in str(exc.value)


@pytest.mark.parametrize("url", [None, b"http://example.com/", 5, ["http://example.com/"]])
def test_url_not_a_string(url: object) -> None:
    with pytest.raises(InvalidRequest, match="must be a string") as exc:
        check_url(url)
    assert type(url).__name__ in str(exc.value)
    assert repr(url) in str(exc.value)


# -- method ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("GET", "GET"),
        ("get", "GET"),
        ("Post", "POST"),
        ("PROPFIND", "PROPFIND"),
        ("M-SEARCH", "M-SEARCH"),
    ],
)
def test_method_accepted_and_upper_cased(method: str, expected: str) -> None:
    assert check_method(method) == expected


@pytest.mark.parametrize(
    "method", ["", "GE T", "GET\r\n", "GET\n", "G\x00T", "GÉT", "GET/1", "(GET)", "GET:", None, 5]
)
def test_method_not_a_token(method: object) -> None:
    with pytest.raises(InvalidRequest, match="method") as exc:
        check_method(method)
    assert repr(method) in str(exc.value)


# -- headers --------------------------------------------------------------------------------


def test_headers_none_is_empty() -> None:
    assert check_headers(None) == []


def test_headers_mapping_and_pairs() -> None:
    assert check_headers({"X-A": "1", "Authorization": "Bearer t"}) == [
        ("X-A", "1"),
        ("Authorization", "Bearer t"),
    ]
    assert check_headers([("X-A", "1"), ("X-A", "2")]) == [("X-A", "1"), ("X-A", "2")]
    assert check_headers(iter([("Cookie", "a=b")])) == [("Cookie", "a=b")]


def test_header_values_are_stripped() -> None:
    assert check_headers({"X-A": "  padded\t"}) == [("X-A", "padded")]


def test_header_value_may_be_empty() -> None:
    assert check_headers({"X-Empty": ""}) == [("X-Empty", "")]


@pytest.mark.parametrize("name", ["", "X A", "X:A", "X-Ä", "X\r\nY", "X\x00", "(X)", "X/Y", "X@Y"])
def test_header_name_not_a_token(name: str) -> None:
    with pytest.raises(InvalidRequest, match="header name") as exc:
        check_headers([(name, "v")])
    assert repr(name) in str(exc.value)


def test_header_name_not_a_string() -> None:
    with pytest.raises(InvalidRequest, match="header name") as exc:
        check_headers([(b"X-A", "v")])  # type: ignore[list-item]
    assert repr(b"X-A") in str(exc.value)


@pytest.mark.parametrize(
    "value", ["a\rb", "a\nb", "a\r\nX-Injected: 1", "a\x00b", "\n", "trailing\r\n"]
)
def test_header_value_with_cr_lf_nul(value: str) -> None:
    with pytest.raises(InvalidRequest, match="CR, LF or NUL") as exc:
        check_headers({"X-A": value})
    assert repr(value) in str(exc.value)
    assert "'X-A'" in str(exc.value)


def test_header_value_not_a_string() -> None:
    with pytest.raises(InvalidRequest, match="value must be a string") as exc:
        check_headers([("X-A", 5)])  # type: ignore[list-item]
    assert "'X-A'" in str(exc.value)
    assert "5" in str(exc.value)


@pytest.mark.parametrize("item", [("only-one",), ("a", "b", "c"), "ab", ["X-A", "v"]])
def test_header_item_not_a_pair(item: object) -> None:
    with pytest.raises(InvalidRequest, match="pair") as exc:
        check_headers([item])  # type: ignore[list-item]
    assert repr(item) in str(exc.value)


@pytest.mark.parametrize(
    "name",
    [
        "Range",
        "range",
        "RANGE",
        "If-Range",
        "Accept-Encoding",
        "accept-encoding",
        "Content-Length",
        "Transfer-Encoding",
        "Host",
    ],
)
def test_engine_managed_headers_refused(name: str) -> None:
    with pytest.raises(InvalidRequest, match="managed by the engine") as exc:
        check_headers({name: "bytes=0-"})
    assert repr(name) in str(exc.value)


@pytest.mark.parametrize(
    "name", ["Authorization", "Cookie", "User-Agent", "Accept", "If-None-Match", "X-Range"]
)
def test_ordinary_headers_allowed(name: str) -> None:
    assert check_headers({name: "v"}) == [(name, "v")]


# -- timeouts -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(1, 1.0), (0.5, 0.5), (30, 30.0), (1e-9, 1e-9)])
def test_timeout_accepted(value: float, expected: float) -> None:
    result = check_timeout("request_timeout", value)
    assert result == expected
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "value", [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, "5", True, False, None, [1]]
)
def test_timeout_refused(value: object) -> None:
    with pytest.raises(InvalidRequest) as exc:
        check_timeout("resource_timeout", value)
    message = str(exc.value)
    assert "resource_timeout" in message
    assert repr(value) in message


# -- sha256 ---------------------------------------------------------------------------------


def test_sha256_none() -> None:
    assert check_sha256(None) is None


def test_sha256_lower_case_accepted() -> None:
    assert check_sha256(SHA) == SHA


def test_sha256_upper_case_accepted_and_lowered() -> None:
    assert check_sha256(SHA.upper()) == SHA


def test_sha256_surrounding_whitespace_is_stripped() -> None:
    assert check_sha256(f"  {SHA}\n") == SHA


@pytest.mark.parametrize(
    "value",
    [
        "",
        SHA[:-1],  # 63
        SHA + "0",  # 65
        SHA[:-1] + "g",  # non-hex
        SHA[:-1] + " ",
        "0x" + SHA[:-2],
        "z" * 64,
        SHA[:32] + " " + SHA[33:],
        b"0" * 64,
        64,
    ],
)
def test_sha256_refused(value: object) -> None:
    with pytest.raises(InvalidRequest, match="sha256") as exc:
        check_sha256(value)
    assert repr(value) in str(exc.value)


CHECKS: list[Callable[[object], object]] = [
    check_url,
    check_method,
    lambda v: check_headers([("X-A", v)]),  # type: ignore[list-item]
    lambda v: check_timeout("t", v),
    check_sha256,
]


@pytest.mark.parametrize("check", CHECKS)
def test_every_refusal_is_caught_as_value_error(check: Callable[[object], object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the point is the base class
        check(object())
