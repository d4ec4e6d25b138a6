"""Checksums from the caller and the server (RFC 9530, x-goog-hash, x-amz-checksum-*)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._digest import (
    Checksum,
    Decision,
    Expected,
    Hashers,
    Verdict,
    algorithm_name,
    crc32c_available,
    decide,
    format_digest_field,
    parse_checksum,
    parse_checksums,
    parse_digest_field,
    server_checksums,
    want_digest_headers,
)

BODY = b'{"hello": "world"}\n'
SHA256 = hashlib.sha256(BODY).digest()
SHA512 = hashlib.sha512(BODY).digest()
MD5 = hashlib.md5(BODY).digest()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --- caller input ---------------------------------------------------------------------------


def test_rfc9530_example_value_is_the_sha256_of_its_body():
    # RFC 9530 Appendix B: {"hello": "world"} plus a newline, sha-256 of it.
    got = parse_digest_field("sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:")
    assert got == {"sha256": SHA256}


@pytest.mark.parametrize(
    "text",
    [
        f"sha256={SHA256.hex()}",
        f"SHA-256={SHA256.hex().upper()}",
        f"sha_256:{SHA256.hex()}",
        f"sha256={b64(SHA256)}",
        f"sha-256=:{b64(SHA256)}:",
        f"sha256={base64.urlsafe_b64encode(SHA256).decode().rstrip('=')}",
    ],
)
def test_parse_checksum_accepts_hex_and_base64_forms(text):
    c = parse_checksum(text)
    assert c == Checksum("sha256", SHA256)
    assert str(c) == f"sha256={SHA256.hex()}"
    assert not c.weak


def test_md5_and_sha1_are_named_weak():
    assert parse_checksum(f"md5={MD5.hex()}").weak
    assert parse_checksum(f"sha1={hashlib.sha1(BODY).hexdigest()}").weak
    assert not parse_checksum(f"sha512={SHA512.hex()}").weak


def test_crc32c_in_base64_of_same_length_as_hex_is_read_as_base64():
    # 4 bytes: 8 hex digits, and 8 base64 characters with padding; "4gcgLQ==" is GCS's example.
    c = parse_checksum("crc32c=4gcgLQ==")
    assert c.digest == base64.b64decode("4gcgLQ==")
    assert parse_checksum("crc32c=e3069283").digest == bytes.fromhex("e3069283")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("sha256", "algorithm=digest"),
        ("=abc", "algorithm=digest"),
        (f"sha3={SHA256.hex()}", "not one of"),
        ("sha256=abcd", "64 hex digits"),
        (f"sha256={SHA256.hex()[:-1]}g", "64 hex digits"),
        (f"sha256={b64(SHA256)[:-4]}", "base64 of 32 bytes"),
        (f"md5={SHA256.hex()}", "32 hex digits"),
        (f"sha256={SHA256.hex()[:30]} {SHA256.hex()[32:]}", "64 hex"),
    ],
)
def test_parse_checksum_refuses_bad_input_with_a_typed_error(text, words):
    with pytest.raises(InvalidRequest, match=words):
        parse_checksum(text)


def test_parse_checksum_refuses_a_non_string():
    with pytest.raises(InvalidRequest, match="must be a string"):
        parse_checksum(b"sha256=00")


def test_checksum_refuses_a_digest_of_the_wrong_size():
    with pytest.raises(InvalidRequest, match="32 bytes, not 3"):
        Checksum("sha256", b"abc")
    with pytest.raises(InvalidRequest, match="unsupported"):
        Checksum("sha3", b"abc")


def test_parse_checksums_forms_and_conflicts():
    assert parse_checksums(None) == ()
    one = Checksum("sha256", SHA256)
    assert parse_checksums(f"sha256={SHA256.hex()}") == (one,)
    assert parse_checksums({"sha256": SHA256.hex(), "md5": MD5.hex()}) == (
        one,
        Checksum("md5", MD5),
    )
    # the same digest twice (hex and base64) is one checksum
    assert parse_checksums([f"sha256={SHA256.hex()}", f"sha-256={b64(SHA256)}"]) == (one,)
    with pytest.raises(InvalidRequest, match="two different sha256"):
        parse_checksums([f"sha256={SHA256.hex()}", f"sha256={SHA512.hex()[:64]}"])


def test_algorithm_name():
    assert algorithm_name("SHA-512") == "sha512"
    assert algorithm_name("crc32c") == "crc32c"
    assert algorithm_name("unixsum") is None


# --- server fields --------------------------------------------------------------------------


def test_digest_field_keeps_supported_byte_sequences_only():
    field = f"sha-512=:{b64(SHA512)}:, unixsum=30637, sha-256=:{b64(SHA512)}:, x=:{b64(SHA256)}:"
    # sha-256 with 64 bytes is not a sha-256: left out; unixsum is not supported.
    assert parse_digest_field(field) == {"sha512": SHA512}


@pytest.mark.parametrize("field", ["", "   ", "sha-256=:abc", "SHA-256=:AAAA:", "é=:AAAA:"])
def test_a_malformed_digest_field_is_ignored_as_a_whole(field):
    assert parse_digest_field(field) == {}
    assert parse_digest_field(None) == {}


def test_digest_field_lines_are_joined():
    lines = [f"sha-256=:{b64(SHA256)}:", f"sha-512=:{b64(SHA512)}:"]
    assert parse_digest_field(lines) == {"sha256": SHA256, "sha512": SHA512}


def test_format_digest_field_round_trips():
    value = format_digest_field([Checksum("sha256", SHA256), Checksum("sha1", b"\0" * 20)])
    assert value == f"sha-256=:{b64(SHA256)}:, sha=:{b64(bytes(20))}:"  # RFC 9530 names SHA-1 "sha"
    assert parse_digest_field(value) == {"sha256": SHA256, "sha1": bytes(20)}
    assert format_digest_field([Checksum("sha384", bytes(48))]) == ""  # not registered
    assert format_digest_field([]) == ""


def test_want_digest_headers():
    assert want_digest_headers() == [
        ("Want-Repr-Digest", "sha-256=10, sha-512=9"),
        ("Want-Content-Digest", "sha-256=10, sha-512=9"),
    ]
    assert want_digest_headers(["sha-512"])[0] == ("Want-Repr-Digest", "sha-512=10")
    assert want_digest_headers([]) == []
    with pytest.raises(InvalidRequest, match="md5"):
        want_digest_headers(["md5"])
    with pytest.raises(InvalidRequest, match="sha3"):
        want_digest_headers(["sha3"])


def test_server_checksums_from_every_kind_of_header():
    crc = bytes.fromhex("e3069283")
    headers = [
        ("Repr-Digest", f"sha-256=:{b64(SHA256)}:"),
        ("Content-Digest", f"sha-512=:{b64(SHA512)}:"),  # one body only: not here
        ("X-Goog-Hash", f"crc32c={b64(crc)},md5={b64(MD5)}"),
        ("x-amz-checksum-sha256", b64(SHA256)),
        ("x-amz-checksum-crc32c", b64(crc)),
    ]
    got = {(e.source, e.checksum.algorithm, e.checksum.digest) for e in server_checksums(headers)}
    assert got == {
        ("Repr-Digest", "sha256", SHA256),
        ("x-goog-hash", "crc32c", crc),
        ("x-goog-hash", "md5", MD5),
        ("x-amz-checksum-sha256", "sha256", SHA256),
        ("x-amz-checksum-crc32c", "crc32c", crc),
    }


def test_x_goog_hash_on_two_lines_and_as_a_mapping():
    lines = [("x-goog-hash", f"md5={b64(MD5)}"), ("x-goog-hash", "crc32c=4gcgLQ==")]
    assert {e.checksum.algorithm for e in server_checksums(lines)} == {"md5", "crc32c"}
    assert [e.checksum.algorithm for e in server_checksums({"X-Goog-Hash": "md5=bad"})] == []


def test_gcs_transcoded_object_hash_is_not_for_the_served_bytes():
    headers = {"x-goog-hash": f"md5={b64(MD5)}", "x-goog-stored-content-encoding": "gzip"}
    assert server_checksums(headers) == ()
    headers["x-goog-stored-content-encoding"] = "identity"
    assert len(server_checksums(headers)) == 1


def test_s3_composite_checksums_are_skipped():
    assert server_checksums({"x-amz-checksum-sha256": b64(SHA256) + "-3"}) == ()
    composite = {"x-amz-checksum-sha256": b64(SHA256), "x-amz-checksum-type": "COMPOSITE"}
    assert server_checksums(composite) == ()
    full = {"x-amz-checksum-sha256": b64(SHA256), "x-amz-checksum-type": "FULL_OBJECT"}
    assert len(server_checksums(full)) == 1


# --- hashing and the decision ---------------------------------------------------------------


def test_hashers_compute_every_algorithm_incrementally():
    h = Hashers(["sha256", "md5", "sha256", "sha512"])
    assert h.algorithms == ("sha256", "md5", "sha512")
    h.update(BODY[:5])
    h.update(BODY[5:])
    assert h.digests() == {"sha256": SHA256, "md5": MD5, "sha512": SHA512}
    with pytest.raises(InvalidRequest):
        Hashers(["whirlpool"])


@pytest.mark.skipif(not crc32c_available(), reason="google-crc32c not installed")
def test_crc32c_check_value():
    # RFC 3720 / iSCSI check value of "123456789".
    h = Hashers(["crc32c"])
    h.update(b"1234")
    h.update(b"56789")
    assert h.digests() == {"crc32c": bytes.fromhex("e3069283")}


def caller(c: Checksum) -> Expected:
    return Expected(c, "caller")


def test_decide_ok_unverified_retry_fail():
    good = Checksum("sha256", SHA256)
    bad = Checksum("sha256", bytes(32))
    computed = {"sha256": SHA256}
    ok = decide([caller(good)], computed, retries_done=0)
    assert ok.verdict is Verdict.OK
    assert "sha256 (caller)" in ok.reason
    assert not ok.weak_only
    assert decide([], computed, retries_done=0).verdict is Verdict.UNVERIFIED
    retry = decide([caller(bad)], computed, retries_done=0)
    assert retry.verdict is Verdict.RETRY
    assert SHA256.hex() in retry.reason
    assert bytes(32).hex() in retry.reason
    fail = decide([caller(bad)], computed, retries_done=1)
    assert fail.verdict is Verdict.FAIL
    assert "after 2 tries" in fail.reason
    assert decide([caller(bad)], computed, retries_done=1, max_retries=3).verdict is Verdict.RETRY


def test_decide_weak_only_and_unknown_algorithm_skipped():
    md5 = Checksum("md5", MD5)
    d = decide([caller(md5)], {"md5": MD5}, retries_done=0)
    assert d.verdict is Verdict.OK
    assert d.weak_only
    # a crc32c that could not be computed neither passes nor fails
    crc = Expected(Checksum("crc32c", b"\0\0\0\1"), "x-goog-hash")
    assert decide([crc], {"md5": MD5}, retries_done=0).verdict is Verdict.UNVERIFIED


def test_a_matching_caller_checksum_overrules_a_server_digest():
    server = Expected(Checksum("sha512", bytes(64)), "Repr-Digest")
    d = decide(
        [caller(Checksum("sha256", SHA256)), server],
        {"sha256": SHA256, "sha512": SHA512},
        retries_done=0,
    )
    assert d.verdict is Verdict.OK
    assert len(d.ignored) == 1
    assert "Repr-Digest" in d.ignored[0]


def test_a_server_digest_alone_decides():
    server = Expected(Checksum("sha256", bytes(32)), "Repr-Digest")
    assert decide([server], {"sha256": SHA256}, retries_done=0).verdict is Verdict.RETRY
    server_ok = Expected(Checksum("sha256", SHA256), "Repr-Digest")
    bad_caller = caller(Checksum("sha512", bytes(64)))
    # the caller's mismatch is never overruled by a server match
    d = decide([server_ok, bad_caller], {"sha256": SHA256, "sha512": SHA512}, retries_done=1)
    assert d.verdict is Verdict.FAIL
    assert "caller" in d.reason


@given(st.binary(max_size=2048), st.integers(min_value=0, max_value=2048))
def test_hashers_split_anywhere_equals_hashlib(data, cut):
    h = Hashers(["sha256", "sha512", "md5"])
    h.update(data[:cut])
    h.update(data[cut:])
    assert h.digests()["sha256"] == hashlib.sha256(data).digest()
    assert h.digests()["md5"] == hashlib.md5(data).digest()


@given(
    st.sampled_from(["sha256", "sha512", "md5", "sha1", "sha384"]),
    st.binary(min_size=64, max_size=64),
)
def test_any_digest_round_trips_through_hex_base64_and_the_field(name, raw):
    size = {"sha256": 32, "sha512": 64, "md5": 16, "sha1": 20, "sha384": 48}[name]
    c = Checksum(name, raw[:size])
    assert parse_checksum(str(c)) == c
    assert parse_checksum(f"{name}={b64(c.digest)}") == c
    assert parse_checksum(f"{name}:{base64.urlsafe_b64encode(c.digest).decode()}") == c
    if name in ("sha256", "sha512"):
        assert parse_digest_field(format_digest_field([c])) == {name: c.digest}


@given(st.text(max_size=80))
def test_parse_checksum_never_raises_anything_but_invalid_request(text):
    try:
        parse_checksum(text)
    except InvalidRequest:
        pass


@given(st.text(max_size=120))
def test_parse_digest_field_never_raises(text):
    result = parse_digest_field(text)
    assert all(len(v) in (32, 64, 20, 16, 4) for v in result.values())


def test_one_bad_caller_checksum_is_not_outvoted_by_a_good_one():
    good = caller(Checksum("sha256", SHA256))
    bad = caller(Checksum("sha512", bytes(64)))
    d = decide([good, bad], {"sha256": SHA256, "sha512": SHA512}, retries_done=0)
    assert d.verdict is Verdict.RETRY
    assert d.reason == (
        f"checksum mismatch (sha512 from caller expected {bytes(64).hex()}, got {SHA512.hex()})"
        ": fetching again"
    )


def test_decision_texts_are_exact():
    computed = {"sha256": SHA256, "md5": MD5}
    ok = decide(
        [caller(Checksum("sha256", SHA256)), Expected(Checksum("md5", MD5), "x-goog-hash")],
        computed,
        retries_done=0,
    )
    assert ok == Decision(Verdict.OK, "verified: md5 (x-goog-hash), sha256 (caller)", False, ())
    assert decide([], computed, retries_done=0) == Decision(
        Verdict.UNVERIFIED, "no checksum to verify the bytes against"
    )
    two_bad = [
        Expected(Checksum("sha256", bytes(32)), "Repr-Digest"),
        Expected(Checksum("md5", bytes(16)), "x-goog-hash"),
    ]
    fail = decide(two_bad, computed, retries_done=1)
    assert fail.reason == (
        f"checksum mismatch after 2 tries: sha256 from Repr-Digest expected {bytes(32).hex()}, "
        f"got {SHA256.hex()}; md5 from x-goog-hash expected {bytes(16).hex()}, got {MD5.hex()}"
    )


def test_byte_sequence_colons_must_be_paired_and_base64_strict():
    with pytest.raises(InvalidRequest):
        parse_checksum(f"sha256=:{b64(SHA256)}")  # no closing colon
    with pytest.raises(InvalidRequest):
        parse_checksum(f"sha256={b64(SHA256)[:10]}!{b64(SHA256)[10:]}")
    assert parse_checksum(f"sha256::{b64(SHA256)}:").digest == SHA256


def test_unsupported_algorithm_message_lists_the_supported_ones():
    with pytest.raises(
        InvalidRequest,
        match=r"^checksum algorithm 'sha3' is not one of crc32c, md5, sha1, sha256, sha384, "
        r"sha512$",
    ):
        parse_checksum(f"sha3={SHA256.hex()}")
    with pytest.raises(InvalidRequest, match=r"^unsupported checksum algorithm 'whirlpool'$"):
        Hashers(["whirlpool"])


def test_crc32c_availability_follows_the_package():
    import importlib.util

    assert crc32c_available() is (importlib.util.find_spec("google_crc32c") is not None)


def test_s3_checksum_with_padding_only_is_not_composite():
    # "=" padding is stripped before looking for the "-N" part-count suffix
    value = b64(SHA256)
    assert value.endswith("=")
    assert len(server_checksums({"x-amz-checksum-sha256": value})) == 1
    assert server_checksums({"x-amz-checksum-sha256": value + "-12"}) == ()
