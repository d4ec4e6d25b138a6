"""The issue-17 cores read what the project's test server really sends (HTTP on 127.0.0.1):
its Metalink documents, Repr-Digest / x-goog-hash / x-amz-checksum headers, SHA256SUMS
files and signed URLs. The engine will be tested against this server, so its formats and
the parsers must agree before they are wired together.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlencode, urlsplit

import pytest

from bgtransfer._protocol._digest import Expected, Hashers, Verdict, decide, server_checksums
from bgtransfer._protocol._digest import want_digest_headers as want
from bgtransfer._protocol._metalink import parse_metalink
from bgtransfer._protocol._mirrors import MirrorSet, Observed
from bgtransfer._protocol._pieces import PieceHasher, refetch_ranges
from bgtransfer._protocol._signed import (
    Keep,
    Representation,
    keep_bytes,
    parse_refresh_output,
    signed_url_expiry,
)
from bgtransfer._protocol._sums import checksum_from_sums, file_name_of
from bgtransfer.testing import FaultServer, gen_bytes

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def srv() -> Iterator[FaultServer]:
    with FaultServer(other_host=True) as server:
        yield server


def get(
    url: str, headers: dict[str, str] | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=20)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def verify(headers: list[tuple[str, str]], body: bytes, retries_done: int = 0) -> Verdict:
    expected = server_checksums(headers)
    hashers = Hashers(e.checksum.algorithm for e in expected)
    hashers.update(body)
    return decide(expected, hashers.digests(), retries_done=retries_done).verdict


def test_metalink_with_a_lying_mirror_end_to_end(srv: FaultServer) -> None:
    status, _, doc = get(srv.url("/metalink/gen/50000?seed=2&mirrors=3&liar=3&piece=8K"))
    assert status == 200
    (f,) = parse_metalink(doc).files
    assert f.size == 50000
    assert f.pieces is not None
    assert f.pieces.count == 7
    assert len(f.sources) == 3
    mirrors = MirrorSet(
        f.urls, length=f.size, checksums=f.checksums, has_pieces=True, max_per_source=2
    )
    disk = bytearray(f.size)
    todo = [f.pieces.piece_range(i) for i in range(f.pieces.count)]
    for _round in range(10):  # bounded: a round fetches what is left or failed
        # as the engine will: segments run at once, so they spread over the sources
        batch: list[tuple[str, tuple[int, int]]] = []
        while todo and (source := mirrors.pick(now=0.0)) is not None:
            batch.append((source, todo.pop(0)))
        assert batch
        for source, (start, end) in batch:
            status, headers, body = get(source, {"Range": f"bytes={start}-{end - 1}"})
            assert status == 206
            length = int((header(headers, "content-range") or "/0").rsplit("/", 1)[1])
            assert mirrors.observe(source, Observed(length, header(headers, "etag"))) is None
            disk[start:end] = body
            for index, ok in PieceHasher(f.pieces, start).feed(body):
                if not ok:
                    todo += refetch_ranges(f.pieces, [index])
                    mirrors.bad_piece(source)
            mirrors.release(source)
        if not todo:
            break
    assert bytes(disk) == gen_bytes(50000, 2)
    assert list(mirrors.dropped) == [f.sources[2]]  # the liar, by its pieces
    hashers = Hashers(c.algorithm for c in f.checksums)
    hashers.update(bytes(disk))
    expected = [Expected(c, "metalink") for c in f.checksums]
    assert decide(expected, hashers.digests(), retries_done=0).verdict is Verdict.OK


def test_repr_digest_on_want_repr_digest(srv: FaultServer) -> None:
    data = gen_bytes(3000, 4)
    url = srv.add(f"d-{uuid.uuid4().hex[:8]}", data)
    status, headers, body = get(url, dict(want()))
    assert (status, body) == (200, data)
    expected = server_checksums(headers)
    assert {(e.source, e.checksum.algorithm) for e in expected} == {
        ("Repr-Digest", "sha256"),
        ("Repr-Digest", "sha512"),
    }
    assert verify(headers, body) is Verdict.OK
    # a 206 carries the digest of the whole representation, not of the part
    status, headers, _part = get(url, {**dict(want()), "Range": "bytes=0-99"})
    assert status == 206
    assert server_checksums(headers)[0].checksum.digest == hashlib.sha256(data).digest()


def test_a_bad_repr_digest_retries_once_then_fails(srv: FaultServer) -> None:
    url = srv.add(f"b-{uuid.uuid4().hex[:8]}", gen_bytes(2000, 5)) + "?bad_digest=repr&digest=1"
    _, headers, body = get(url)
    assert verify(headers, body, retries_done=0) is Verdict.RETRY
    assert verify(headers, body, retries_done=1) is Verdict.FAIL


def test_goog_hash_and_amz_checksum(srv: FaultServer) -> None:
    data = gen_bytes(2000, 3)
    url = srv.add(f"g-{uuid.uuid4().hex[:8]}", data)
    _, headers, body = get(url + "?goog_hash=1&amz_checksum=1")
    sources = sorted((e.source, e.checksum.algorithm) for e in server_checksums(headers))
    assert sources == [
        ("x-amz-checksum-sha256", "sha256"),
        ("x-goog-hash", "crc32c"),
        ("x-goog-hash", "md5"),
    ]
    assert verify(headers, body) is Verdict.OK
    _, headers, body = get(url + "?goog_hash=1&amz_checksum=1&bad_digest=goog,amz")
    assert verify(headers, body) is Verdict.RETRY


def test_sha256sums_and_sidecar(srv: FaultServer) -> None:
    folder = uuid.uuid4().hex[:8]
    data = gen_bytes(5000, 6)
    url = srv.add(f"{folder}/tool.tar.gz", data)
    srv.add(f"{folder}/other.bin", b"other")
    for sums_url in (url + ".sha256", srv.url(f"/r/{folder}/SHA256SUMS")):
        status, _, text = get(sums_url)
        assert status == 200
        got = checksum_from_sums(text, file_name_of(url), sums_name=sums_url)
        assert got.digest == hashlib.sha256(data).digest()


@pytest.mark.parametrize("style", ["amz", "token"])
def test_signed_urls_say_when_they_expire(srv: FaultServer, style: str) -> None:
    name = f"s-{uuid.uuid4().hex[:8]}"
    srv.add(name, b"x" * 100)
    before = time.time()
    url = srv.sign_url(f"/r/{name}", expires_in=300, style=style)
    expiry = signed_url_expiry(url)
    assert expiry is not None
    assert before + 298 <= expiry <= time.time() + 301  # whole seconds in the URL


def test_the_sign_endpoint_output_is_a_valid_refresh(srv: FaultServer) -> None:
    name = f"r-{uuid.uuid4().hex[:8]}"
    data = gen_bytes(1000, 8)
    srv.add(name, data)
    _, first_headers, _ = get(srv.url(f"/r/{name}"))
    _, _, out = get(srv.url("/sign?" + urlencode({"path": f"/r/{name}"})))
    refresh = parse_refresh_output(out)
    assert refresh.expires == json.loads(out)["expires"]
    assert signed_url_expiry(refresh.url) == refresh.expires
    status, headers, body = get(refresh.url)
    assert (status, body) == (200, data)
    old = Representation(len(data), header(first_headers, "etag"))
    same = Representation(len(body), header(headers, "etag"))
    assert keep_bytes(old, same, caller_sha256=False)[0] is Keep.KEEP
    # change=1: a new version of the same length: the bytes cannot be kept without a checksum
    _, _, out = get(srv.url("/sign?" + urlencode({"path": f"/r/{name}", "change": 1})))
    changed = parse_refresh_output(out)
    status, headers, body = get(changed.url)
    assert status == 200
    new = Representation(len(body), header(headers, "etag"))
    assert keep_bytes(old, new, caller_sha256=False)[0] is Keep.RESTART
