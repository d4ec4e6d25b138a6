"""Signed URL expiry, the refresh decision, refresh results and keeping bytes (issue 17)."""

from __future__ import annotations

import calendar
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._signed import (
    MAX_REFRESHES,
    Keep,
    Refresh,
    RefreshAction,
    Representation,
    keep_bytes,
    parse_refresh_output,
    parse_refresh_result,
    redact_signature,
    refresh_due,
    refresh_on_status,
    signed_url_expiry,
)

T0 = float(calendar.timegm((2013, 7, 21, 20, 12, 7)))  # 20130721T201207Z

# The shape of the example in AWS's "Authenticating Requests: Using Query Parameters".
S3_V4 = (
    "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIDEXAMPLE%2F20130721%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20130721T201207Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=abcdef0123"
)
GCS_V4 = (
    "https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256"
    "&X-Goog-Credential=sa%40p.iam.gserviceaccount.com%2F20130721%2Fauto%2Fstorage%2Fgoog4_request"
    "&X-Goog-Date=20130721T201207Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host"
    "&X-Goog-Signature=00ff"
)
# DataSync's documented example token shape.
AZURE = (
    "https://acct.blob.core.windows.net/c/blob?sp=r&st=2023-12-20T14:54:52Z"
    "&se=2023-12-20T22:54:52Z&spr=https&sv=2021-06-08&sr=c&sig=aBBK%2FXTI9E%3D"
)
CLOUDFRONT = "https://d111111abcdef8.cloudfront.net/image.jpg?Expires=1700000000&Signature=abc~&Key-Pair-Id=K2"


def test_s3_sigv4_expiry_is_date_plus_expires():
    assert signed_url_expiry(S3_V4) == T0 + 86400


def test_gcs_v4_expiry():
    assert signed_url_expiry(GCS_V4) == T0 + 900


def test_azure_sas_expiry_is_se():
    assert signed_url_expiry(AZURE) == calendar.timegm((2023, 12, 20, 22, 54, 52))
    date_only = "https://a.blob.core.windows.net/c/b?se=2024-01-02&sig=x"
    assert signed_url_expiry(date_only) == calendar.timegm((2024, 1, 2, 0, 0, 0))
    minutes = "https://a.blob.core.windows.net/c/b?se=2024-01-02T03:04Z&sig=x"
    assert signed_url_expiry(minutes) == calendar.timegm((2024, 1, 2, 3, 4, 0))
    fraction = "https://a.blob.core.windows.net/c/b?se=2024-01-02T03:04:05.1234567Z&sig=x"
    assert signed_url_expiry(fraction) == calendar.timegm((2024, 1, 2, 3, 4, 5))


def test_legacy_expires_epoch_needs_a_signature():
    assert signed_url_expiry(CLOUDFRONT) == 1700000000.0
    assert signed_url_expiry("https://h/x?Expires=1700000000") is None
    s3_v2 = "https://b.s3.amazonaws.com/k?AWSAccessKeyId=A&Expires=1141889120&Signature=v%2F"
    assert signed_url_expiry(s3_v2) == 1141889120.0


def test_earliest_of_several_expiries_wins():
    both = S3_V4 + "&Expires=1000&Signature=x"
    assert signed_url_expiry(both) == 1000.0


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/file.bin",
        "https://example.com/file.bin?se=2024-01-02",  # no sig: not a SAS
        "https://h/x?X-Amz-Date=20130721T201207Z",  # no lifetime
        "https://h/x?X-Amz-Date=20131321T201207Z&X-Amz-Expires=5",  # month 13
        "https://h/x?X-Amz-Date=2013-07-21&X-Amz-Expires=5",
        "https://h/x?X-Amz-Date=20130721T201207Z&X-Amz-Expires=-5",
        "https://h/x?se=2024-13-02&sig=x",
        "https://h/x?se=yesterday&sig=x",
        "https://h/x?Expires=soon&Signature=x",
        "http://[::1/x?Expires=1&Signature=x",  # unparsable
    ],
)
def test_no_expiry_when_the_url_does_not_say_one(url):
    assert signed_url_expiry(url) is None


def test_refresh_due():
    assert not refresh_due(None, T0)
    assert not refresh_due(T0 + 100, T0, margin=30)
    assert refresh_due(T0 + 30, T0, margin=30)
    assert refresh_due(T0 - 1, T0, margin=0)


def test_refresh_on_status():
    def act(
        status: int,
        *,
        has_hook: bool = True,
        had_response: bool = True,
        url_expired: bool = False,
        refreshes: int = 0,
        refreshes_in_a_row: int = 0,
    ) -> RefreshAction:
        return refresh_on_status(
            status,
            has_hook=has_hook,
            had_response=had_response,
            url_expired=url_expired,
            refreshes=refreshes,
            refreshes_in_a_row=refreshes_in_a_row,
        )

    for status in (401, 403, 410):
        assert act(status) is RefreshAction.REFRESH
    # a fresh URL refused at once is a real refusal...
    assert act(403, had_response=False) is RefreshAction.NONE
    # ...unless the URL itself says it has expired
    assert act(403, had_response=False, url_expired=True) is RefreshAction.REFRESH
    assert act(400, had_response=True) is RefreshAction.NONE
    assert act(400, had_response=False, url_expired=True) is RefreshAction.REFRESH
    assert act(404) is RefreshAction.NONE
    assert act(503) is RefreshAction.NONE
    assert act(403, has_hook=False) is RefreshAction.NONE
    assert act(403, refreshes=MAX_REFRESHES) is RefreshAction.EXHAUSTED
    assert act(403, refreshes=MAX_REFRESHES - 1) is RefreshAction.REFRESH
    assert act(403, refreshes_in_a_row=2) is RefreshAction.EXHAUSTED
    assert act(403, refreshes_in_a_row=1) is RefreshAction.REFRESH


def test_parse_refresh_result():
    r = parse_refresh_result({"url": "https://h/new?sig=1", "headers": {"Authorization": "B t"}})
    assert r == Refresh("https://h/new?sig=1", (("Authorization", "B t"),))
    assert parse_refresh_result({"url": "http://h/x"}) == Refresh("http://h/x")
    assert parse_refresh_result({"url": "http://h/x", "headers": None}).headers == ()


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        ("https://h/x", "not str"),
        (None, "not NoneType"),
        ({}, 'must have a "url"'),
        ({"url": "https://h/x", "header": {}}, "unknown keys"),
        ({"url": "ftp://h/x"}, "scheme must be http or https"),
        ({"url": 5}, "must be a string"),
        ({"url": "https://h/x\r\nX: y"}, "control characters"),
        ({"url": "https://h/x", "headers": [("A", "b")]}, "must be an object"),
        ({"url": "https://h/x", "headers": {"A": "b\r\nInjected: 1"}}, "CR, LF"),
        ({"url": "https://h/x", "headers": {"Bad Name": "b"}}, "not a valid HTTP token"),
        ({"url": "https://h/x", "headers": {"Range": "bytes=0-"}}, "managed by the engine"),
        ({"url": "https://h/x", "headers": {"A": 1}}, "must be a string"),
    ],
)
def test_parse_refresh_result_refuses_malformed(obj, words):
    with pytest.raises(InvalidRequest, match=words):
        parse_refresh_result(obj)


def test_parse_refresh_output_json_and_bare_url():
    out = json.dumps({"url": "https://h/n", "headers": {"X-Token": "t"}}).encode()
    assert parse_refresh_output(out) == Refresh("https://h/n", (("X-Token", "t"),))
    assert parse_refresh_output(b"https://h/presigned?X-Amz-Signature=1\n") == Refresh(
        "https://h/presigned?X-Amz-Signature=1"
    )
    assert parse_refresh_output("  https://h/x  ") == Refresh("https://h/x")


@pytest.mark.parametrize(
    ("out", "words"),
    [
        (b"", "printed nothing"),
        (b"\n \n", "printed nothing"),
        (b"{not json", "invalid JSON"),
        (b"https://h/a\nhttps://h/b", "several lines"),
        (b"\xff\xfe", "not UTF-8"),
        (b"x" * 70000, "more than"),
        (b"file:///etc/passwd", "scheme"),
        (b'{"url": "https://h/x", "extra": 1}', "unknown keys"),
    ],
)
def test_parse_refresh_output_refuses(out, words):
    with pytest.raises(InvalidRequest, match=words):
        parse_refresh_output(out)


def test_redact_signature_hides_secrets_only():
    shown = redact_signature(S3_V4)
    assert "abcdef0123" not in shown
    assert "AKIDEXAMPLE" not in shown
    assert "X-Amz-Signature=***" in shown
    assert "X-Amz-Expires=86400" in shown
    assert "sig=***" in redact_signature(AZURE)
    assert "se=2023-12-20T22:54:52Z" in redact_signature(AZURE)
    assert redact_signature("https://h/x") == "https://h/x"
    assert redact_signature("http://[::1/x") == "<unparsable URL>"


def test_keep_bytes_decisions():
    sha = {"sha256": b"a" * 32}
    old = Representation(100, '"v1"', sha)
    assert keep_bytes(old, Representation(100, '"v1"'), caller_sha256=False)[0] is Keep.KEEP
    assert keep_bytes(old, Representation(101, '"v1"'), caller_sha256=True) == (
        Keep.RESTART,
        "the length changed from 100 to 101",
    )
    # the same Repr-Digest proves it whatever the ETags say
    assert keep_bytes(old, Representation(100, '"cdn2"', sha), caller_sha256=False)[0] is Keep.KEEP
    other = Representation(100, '"v1"', {"sha256": b"b" * 32})
    assert keep_bytes(old, other, caller_sha256=True)[0] is Keep.RESTART
    # a different tag may be another CDN: kept only when the caller's sha256 will check it
    moved = Representation(100, '"cdn2"')
    assert keep_bytes(Representation(100, '"v1"'), moved, caller_sha256=True)[0] is Keep.KEEP_VERIFY
    verdict, why = keep_bytes(Representation(100, '"v1"'), moved, caller_sha256=False)
    assert verdict is Keep.RESTART
    assert "ETag changed" in why
    # weak tags prove nothing
    weak = Representation(100, 'W/"v1"')
    assert keep_bytes(weak, weak, caller_sha256=False)[0] is Keep.RESTART
    assert keep_bytes(weak, weak, caller_sha256=True)[0] is Keep.KEEP_VERIFY
    unknown = Representation(None)
    assert keep_bytes(unknown, unknown, caller_sha256=True)[0] is Keep.RESTART


@given(
    st.integers(min_value=0, max_value=4_000_000_000),
    st.integers(min_value=0, max_value=604800),
)
def test_sigv4_expiry_for_any_date_and_lifetime(start, lifetime):
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(start))
    url = f"https://h/k?X-Amz-Date={stamp}&X-Amz-Expires={lifetime}&X-Amz-Signature=s"
    assert signed_url_expiry(url) == start + lifetime


@given(st.text(max_size=200))
def test_signed_url_expiry_never_raises(query):
    result = signed_url_expiry("https://h/x?" + query)
    assert result is None or isinstance(result, float)


@given(st.recursive(st.none() | st.text() | st.integers(), lambda c: st.dictionaries(st.text(), c)))
def test_parse_refresh_result_raises_only_invalid_request(obj):
    try:
        r = parse_refresh_result(obj)
    except InvalidRequest:
        return
    assert r.url.startswith(("http://", "https://"))


def test_date_field_bounds():
    def at(stamp: str) -> float | None:
        return signed_url_expiry(f"https://h/k?X-Amz-Date={stamp}&X-Amz-Expires=0")

    assert at("20130731T235959Z") == calendar.timegm((2013, 7, 31, 23, 59, 59))
    assert at("20131201T000000Z") == calendar.timegm((2013, 12, 1, 0, 0, 0))
    for bad in ("20130732T000000Z", "20130700T000000Z", "20130701T240000Z", "20130701T006000Z"):
        assert at(bad) is None, bad
    assert at("20130701T000061Z") is None
    assert at("20130701T000060Z") == calendar.timegm((2013, 7, 1, 0, 1, 0))  # a leap second


def test_expires_digit_bound():
    twelve = "https://h/x?Expires=999999999999&Signature=s"
    assert signed_url_expiry(twelve) == 999999999999.0
    assert signed_url_expiry("https://h/x?Expires=1000000000000&Signature=s") is None


def test_url_expired_defaults_to_false():
    assert refresh_on_status(403, has_hook=True, had_response=False) is RefreshAction.NONE


def test_refresh_result_names_the_unknown_key():
    with pytest.raises(InvalidRequest, match=r"\['header'\]"):
        parse_refresh_result({"url": "https://h/x", "header": {}})


def test_refresh_output_size_bound_is_inclusive():
    url = "https://h/" + "a" * (64 * 1024 - len("https://h/"))
    assert parse_refresh_output(url.encode()).url == url
    with pytest.raises(InvalidRequest, match="more than 65536 bytes"):
        parse_refresh_output((url + "a").encode())


def test_redact_signature_exact_output():
    url = "https://h/x?a=1&Signature=abc==&X-Custom-Signature=zz&se=2024-01-01&flag"
    assert redact_signature(url) == (
        "https://h/x?a=1&Signature=***&X-Custom-Signature=***&se=2024-01-01&flag"
    )


def test_keep_bytes_reasons_are_exact():
    same_len = Representation(100)
    assert keep_bytes(same_len, same_len, caller_sha256=True) == (
        Keep.KEEP_VERIFY,
        "the same length; the caller's sha256 will check the file",
    )
    assert keep_bytes(same_len, same_len, caller_sha256=False) == (
        Keep.RESTART,
        "nothing shows the new URL serves the same bytes",
    )
    tagged = Representation(100, '"a"')
    assert keep_bytes(tagged, tagged, caller_sha256=False) == (
        Keep.KEEP,
        'the same strong ETag "a"',
    )
    assert keep_bytes(tagged, Representation(100, '"b"'), caller_sha256=False) == (
        Keep.RESTART,
        'the ETag changed from "a" to "b"',
    )
    # one tag missing: nothing to compare, and no checksum
    assert keep_bytes(tagged, same_len, caller_sha256=False)[1] == (
        "nothing shows the new URL serves the same bytes"
    )
    # lengths: one unknown is no proof of sameness
    assert (
        keep_bytes(Representation(None, '"a"'), Representation(5, '"a"'), caller_sha256=True)[0]
        is Keep.KEEP
    )
    assert keep_bytes(Representation(None), Representation(5), caller_sha256=True)[0] is (
        Keep.RESTART
    )
    d1, d2 = {"sha256": b"1" * 32}, {"sha256": b"2" * 32, "sha512": b"3" * 64}
    assert keep_bytes(
        Representation(5, None, d1), Representation(5, None, d2), caller_sha256=True
    ) == (
        Keep.RESTART,
        "the sha256 Repr-Digest changed",
    )
    assert keep_bytes(
        Representation(5, None, d2), Representation(5, None, d2), caller_sha256=False
    ) == (
        Keep.KEEP,
        "the same sha256 Repr-Digest",
    )


def test_token_and_expires_style():
    assert signed_url_expiry("https://h/s/r/x?token=ab12&expires=1700000000") == 1700000000.0
    assert signed_url_expiry("https://h/s/r/x?expires=1700000000") is None


def test_a_refresh_may_say_when_its_url_expires():
    r = parse_refresh_output(b'{"url": "http://h/x?token=1&expires=5", "expires": 1700000000}')
    assert r == Refresh("http://h/x?token=1&expires=5", (), 1700000000.0)
    assert parse_refresh_result({"url": "http://h/x", "expires": 1.5}).expires == 1.5
    for bad in (True, "soon", -1, float("nan"), float("inf")):
        with pytest.raises(InvalidRequest, match='"expires" must be epoch seconds'):
            parse_refresh_result({"url": "http://h/x", "expires": bad})
    with pytest.raises(InvalidRequest, match=r"\(allowed: url, headers, expires\)$"):
        parse_refresh_result({"url": "http://h/x", "expiry": 1})
