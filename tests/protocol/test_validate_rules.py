"""Boundaries of the caller-input checks, and the exact words of each refusal (issue 20).

Every refusal is an ``InvalidRequest`` (code ``invalid_request``); which rule refused is
told only by the message, so the messages are pinned here once, exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._validate import (
    check_headers,
    check_method,
    check_sha256,
    check_timeout,
    check_url,
)

BASE = "http://example.com/"


@pytest.mark.parametrize(
    "char",
    [
        "!",  # U+0021, the first printable ASCII character after the space
        "~",  # U+007E, the last before DEL
        "\u00a0",  # NBSP, the first character after the C1 controls
        "\u00e9",
        "\u4e2d",
    ],
)
def test_characters_just_outside_the_control_ranges_are_kept(char: str) -> None:
    url = f"{BASE}a{char}b"
    assert check_url(url) == url


@pytest.mark.parametrize("code", [0x00, 0x1F, 0x20, 0x7F, 0x80, 0x9F])
def test_the_edges_of_the_control_ranges_are_refused(code: int) -> None:
    url = f"{BASE}a{chr(code)}b"
    with pytest.raises(InvalidRequest) as exc:
        check_url(url)
    assert exc.value.code == "invalid_request"
    assert exc.value.message == f"URL contains whitespace or control characters: {url!r}"


def test_a_url_with_port_zero_is_refused() -> None:
    with pytest.raises(InvalidRequest) as exc:
        check_url("http://example.com:0/x")
    assert exc.value.message == "URL port 0 cannot be connected to: 'http://example.com:0/x'"
    assert check_url("http://example.com:1/x") == "http://example.com:1/x"


@pytest.mark.parametrize("value", ["X", "XX", "aXb", "X-Value", "x"])
def test_a_header_value_may_contain_any_printable_letter(value: str) -> None:
    assert check_headers({"X-A": value}) == [("X-A", value)]


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (check_url, 5, "URL must be a string, not int: 5"),
        (check_url, "", "URL contains whitespace or control characters: ''"),
        (
            check_url,
            "http://example.com:port/",
            "URL cannot be parsed (Port could not be cast to integer value as 'port'): "
            "'http://example.com:port/'",
        ),
        (
            check_url,
            "ftp://h/x",
            "URL scheme must be http or https, not 'ftp': 'ftp://h/x'",
        ),
        (
            check_url,
            "h/x",
            "URL scheme must be http or https, not 'missing': 'h/x'",
        ),
        (check_url, "http:///x", "URL has no host: 'http:///x'"),
        (check_method, "G T", "HTTP method is not a valid token: 'G T'"),
        (
            lambda v: check_headers([v]),
            ("a",),
            "header must be a (name, value) pair: ('a',)",
        ),
        (
            lambda v: check_headers([(v, "x")]),
            "X A",
            "header name is not a valid HTTP token: 'X A'",
        ),
        (
            lambda v: check_headers([("X-A", v)]),
            5,
            "header 'X-A' value must be a string: 5",
        ),
        (
            lambda v: check_headers([("X-A", v)]),
            "a\nb",
            "header 'X-A' value contains CR, LF or NUL: 'a\\nb'",
        ),
        (
            lambda v: check_headers([(v, "bytes=0-")]),
            "Range",
            "header 'Range' is managed by the engine (resume needs it) and cannot be set",
        ),
        (
            lambda v: check_timeout("request_timeout", v),
            "5",
            "request_timeout must be a number of seconds, not '5'",
        ),
        (
            lambda v: check_timeout("request_timeout", v),
            0,
            "request_timeout must be a positive finite number of seconds, not 0",
        ),
        (check_sha256, "abc", "sha256 must be 64 hexadecimal characters, not 'abc'"),
    ],
)
def test_each_refusal_says_exactly_what_is_wrong(
    check: Callable[[object], object], value: object, message: str
) -> None:
    with pytest.raises(InvalidRequest) as exc:
        check(value)
    assert exc.value.code == "invalid_request"
    assert exc.value.message == message
    assert str(exc.value) == message
