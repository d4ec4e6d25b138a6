"""The test server's integrity knobs: RFC 9530 digests, cloud checksums, lying mirrors.

Every expected value is computed here from the bytes with hashlib (or the RFC 3720
check value), never taken from the server's own helpers.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from bgtransfer.testing import FaultServer, gen_bytes
from bgtransfer.testing._integrity import crc32c

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def srv() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, http.client.HTTPMessage, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=20)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def sf(algo: str, data: bytes) -> str:
    return f"{algo}=:{b64(hashlib.new(algo.replace('-', ''), data).digest())}:"


def parse_dict(value: str) -> dict[str, str]:
    out = {}
    for member in value.split(","):
        k, _, v = member.strip().partition("=")
        out[k] = v
    return out


def unique(srv: FaultServer, data: bytes) -> str:
    return srv.add(f"i-{uuid.uuid4().hex[:8]}", data)


# --------------------------------------------------------------------------- RFC 9530


def test_no_digest_unless_asked(srv: FaultServer) -> None:
    status, headers, _ = get(unique(srv, b"abc" * 100))
    assert status == 200
    assert headers["Repr-Digest"] is None
    assert headers["Content-Digest"] is None


def test_want_repr_digest_on_a_range_covers_the_whole_representation(srv: FaultServer) -> None:
    data = gen_bytes(5000, 7)
    url = unique(srv, data)
    status, headers, body = get(
        url, {"Range": "bytes=100-199", "Want-Repr-Digest": "sha-512=3, sha-256=10"}
    )
    assert status == 206
    assert body == data[100:200]
    # Preference order: sha-256 (10) before sha-512 (3).
    assert headers["Repr-Digest"] == f"{sf('sha-256', data)}, {sf('sha-512', data)}"
    assert headers["Content-Digest"] is None


def test_want_content_digest_covers_the_range_sent(srv: FaultServer) -> None:
    data = gen_bytes(5000, 8)
    url = unique(srv, data)
    _, headers, body = get(url, {"Range": "bytes=10-", "Want-Content-Digest": "sha-256=1"})
    assert body == data[10:]
    assert headers["Content-Digest"] == sf("sha-256", data[10:])
    assert headers["Repr-Digest"] is None


def test_want_digest_zero_preference_and_unknown_algorithms(srv: FaultServer) -> None:
    data = b"x" * 10
    url = unique(srv, data)
    _, headers, _ = get(url, {"Want-Repr-Digest": "sha-256=0, sha-512=1"})
    assert headers["Repr-Digest"] == sf("sha-512", data)
    _, headers, _ = get(url, {"Want-Repr-Digest": "md5=5"})
    assert headers["Repr-Digest"] == sf("sha-256", data)


def test_digest_knob_always_sends_both(srv: FaultServer) -> None:
    status, headers, body = get(srv.url("/gen/3000?seed=4&digest=1"))
    data = gen_bytes(3000, 4)
    assert status == 200
    assert body == data
    for field in ("Repr-Digest", "Content-Digest"):
        assert headers[field] == f"{sf('sha-256', data)}, {sf('sha-512', data)}"


def test_digest_of_gzip_representation_is_of_the_gzip_bytes(srv: FaultServer) -> None:
    data = b"compress me " * 500
    url = unique(srv, data) + "?gzip=1&digest=1"
    _, headers, body = get(url)
    assert headers["Content-Encoding"] == "gzip"
    assert parse_dict(headers["Repr-Digest"])["sha-256"] == sf("sha-256", body).partition("=")[2]


def test_bad_digest_is_wrong_while_the_bytes_are_right_and_obeys_times(srv: FaultServer) -> None:
    data = gen_bytes(4096, 9)
    url = unique(srv, data) + f"?bad_digest=repr&times=1&k={uuid.uuid4().hex}"
    want = {"Want-Repr-Digest": "sha-256=1"}
    _, headers, body = get(url, want)
    assert body == data
    assert headers["Repr-Digest"] is not None
    assert headers["Repr-Digest"] != sf("sha-256", data)
    # The second request is past times=1: the header is true again.
    _, headers, body = get(url, want)
    assert headers["Repr-Digest"] == sf("sha-256", data)


def test_bad_content_digest_only(srv: FaultServer) -> None:
    data = b"0123456789" * 20
    url = unique(srv, data) + "?bad_digest=content&digest=1"
    _, headers, _ = get(url)
    assert headers["Repr-Digest"].startswith(sf("sha-256", data))
    assert parse_dict(headers["Content-Digest"])["sha-256"] != sf("sha-256", data).partition("=")[2]


def test_bad_digest_value_is_checked(srv: FaultServer) -> None:
    status, _, body = get(unique(srv, b"a") + "?bad_digest=everything")
    assert status == 400
    assert b"bad_digest" in body


# --------------------------------------------------------------------------- cloud checksums


def test_crc32c_check_value() -> None:
    # RFC 3720 B.4 / the CRC catalogue: CRC-32C of "123456789" is 0xE3069283.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283


def test_goog_hash_and_amz_checksum(srv: FaultServer) -> None:
    data = gen_bytes(2000, 3)
    url = unique(srv, data) + "?goog_hash=1&amz_checksum=1"
    status, headers, body = get(url, {"Range": "bytes=0-9"})
    assert status == 206
    assert body == data[:10]
    crc = crc32c(data).to_bytes(4, "big")
    assert headers["x-goog-hash"] == f"crc32c={b64(crc)},md5={b64(hashlib.md5(data).digest())}"
    assert headers["x-amz-checksum-sha256"] == b64(hashlib.sha256(data).digest())
    assert headers["x-amz-checksum-type"] == "FULL_OBJECT"


def test_bad_goog_and_amz(srv: FaultServer) -> None:
    data = b"payload" * 30
    _, headers, body = get(unique(srv, data) + "?bad_digest=goog,amz")
    assert body == data
    good_crc = b64(crc32c(data).to_bytes(4, "big"))
    assert headers["x-goog-hash"].startswith("crc32c=")
    assert good_crc not in headers["x-goog-hash"]
    assert headers["x-amz-checksum-sha256"] != b64(hashlib.sha256(data).digest())


# --------------------------------------------------------------------------- lying mirrors


def test_lie_serves_other_bytes_of_the_same_length_with_another_etag(srv: FaultServer) -> None:
    data = gen_bytes(3000, 5)
    url = unique(srv, data)
    _, true_headers, _ = get(url)
    status, headers, body = get(url + "?lie=1")
    assert status == 200
    assert len(body) == len(data)
    assert all(a != b for a, b in zip(body, data, strict=True))
    assert headers["Content-Length"] == str(len(data))
    assert headers["ETag"] != true_headers["ETag"]


def test_lie_etag_keeps_the_validators_and_ranges_stay_consistent(srv: FaultServer) -> None:
    data = gen_bytes(3000, 6)
    url = unique(srv, data)
    _, true_headers, _ = get(url)
    _, full_headers, full = get(url + "?lie=etag")
    _, headers, part = get(url + "?lie=etag", {"Range": "bytes=1000-1999"})
    assert full != data
    assert part == full[1000:2000]
    assert full_headers["ETag"] == true_headers["ETag"] == headers["ETag"]
    assert full_headers["Last-Modified"] == true_headers["Last-Modified"]


def test_lie_range_spoils_only_that_piece(srv: FaultServer) -> None:
    _, _, body = get(srv.url("/gen/4096?seed=2&lie_range=1024-2048&lie=etag"))
    data = gen_bytes(4096, 2)
    assert body[:1024] == data[:1024]
    assert body[2048:] == data[2048:]
    assert all(a != b for a, b in zip(body[1024:2048], data[1024:2048], strict=True))


def test_lying_mirror_digest_matches_its_own_bytes(srv: FaultServer) -> None:
    data = b"truth" * 100
    _, headers, body = get(unique(srv, data) + "?lie=etag&digest=1")
    assert body != data
    assert headers["Repr-Digest"].startswith(sf("sha-256", body))


@pytest.mark.parametrize("query", ["lie=2", "lie_range=5-5", "lie_range=x-9"])
def test_bad_lie_knobs(srv: FaultServer, query: str) -> None:
    status, _, body = get(unique(srv, b"abc") + "?" + query)
    assert status == 400
    assert b"lie" in body


def test_help_lists_every_knob() -> None:
    import dataclasses
    import subprocess
    import sys

    from bgtransfer.testing._knobs import Knobs

    out = subprocess.run(
        [sys.executable, "-m", "bgtransfer.testing", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    missing = [f.name for f in dataclasses.fields(Knobs) if f"{f.name}=" not in out]
    assert missing == []
    for endpoint in ("/s/r/", "/sign?", "/metalink/", "SHA256SUMS", ".sha256"):
        assert endpoint in out
