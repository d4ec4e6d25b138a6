"""Real-socket tests for the upload endpoints of the fault-injecting test server.

Plain and multipart uploads at ``/upload/<name>``, tus 1.0.0 at ``/tus/`` and
the IETF resumable-upload draft at ``/ietf/<name>``, driven with ``http.client``
(and raw sockets where a client has to misbehave).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from bgtransfer.testing import FaultServer

pytestmark = pytest.mark.timeout(60)

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
PARTIAL = "application/partial-upload"
CUT_ERRORS = (OSError, http.client.HTTPException)


@pytest.fixture(scope="module")
def srv() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def uname(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def send(
    c: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> Resp:
    chunked = body is not None and not isinstance(body, bytes)
    c.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
    r = c.getresponse()
    data = r.read()
    return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data)


def call(
    srv: FaultServer,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> Resp:
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=15)
    try:
        return send(c, method, path, body, headers)
    finally:
        c.close()


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def assert_framed(r: Resp) -> None:
    if r.status == 204:
        assert "content-length" not in r.headers
    else:
        assert r.headers["content-length"] == str(len(r.body))


# --------------------------------------------------------------------------- plain


def test_plain_put_stores_exact_bytes_and_answers_json(srv: FaultServer) -> None:
    name = uname()
    data = os.urandom(200_000) + b"\r\n--boundary\r\n\r\n"
    r = call(srv, "PUT", f"/upload/{name}", data, {"Idempotency-Key": "key-1"})
    assert r.status == 201
    assert_framed(r)
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"name": name, "size": len(data), "sha256": sha256(data)}
    assert srv.uploads[name] == data
    assert srv.upload_complete(name)
    assert srv.upload_received(name) == len(data)

    assert call(srv, "PUT", f"/upload/{name}", b"v2").status == 200
    assert srv.uploads[name] == b"v2"
    post = call(srv, "POST", f"/upload/{uname()}", b"")
    assert post.status == 200
    assert post.json() == {"name": post.json()["name"], "size": 0, "sha256": sha256(b"")}  # type: ignore[index]
    assert srv.upload_received(name) == len(data) + 2

    log = srv.requests(f"/upload/{name}")
    assert [rec.method for rec in log] == ["PUT", "PUT"]
    assert log[0].headers["idempotency-key"] == "key-1"
    assert "idempotency-key" not in log[1].headers

    assert call(srv, "GET", f"/upload/{name}").status == 405
    assert call(srv, "PUT", "/upload/").status == 404


def test_chunked_request_body(srv: FaultServer) -> None:
    name = uname()
    pieces = [os.urandom(n) for n in (1, 70_000, 5, 3 * 65536 + 7)]
    data = b"".join(pieces)
    r = call(srv, "PUT", f"/upload/{name}", iter(pieces))
    assert r.status == 201
    assert r.json() == {"name": name, "size": len(data), "sha256": sha256(data)}
    assert srv.uploads[name] == data
    assert srv.upload_received(name) == len(data)
    assert srv.requests(f"/upload/{name}")[0].headers["transfer-encoding"] == "chunked"


def test_large_chunked_upload(srv: FaultServer) -> None:
    name = uname()
    block = os.urandom(1 << 20)
    r = call(srv, "POST", f"/upload/{name}", iter([block] * 16))
    assert r.status == 200
    assert r.json() == {"name": name, "size": 16 << 20, "sha256": sha256(block * 16)}
    assert srv.upload_received(name) == 16 << 20


def test_cut_counts_received_bytes_and_stores_nothing(srv: FaultServer) -> None:
    name = uname()
    data = os.urandom(300_000)
    path = f"/upload/{name}?cut=1000&times=1"
    with pytest.raises(CUT_ERRORS):
        call(srv, "PUT", path, data)
    assert srv.upload_received(name) == 1000
    assert name not in srv.uploads
    assert not srv.upload_complete(name)
    r = call(srv, "PUT", path, data)  # times=1: the second attempt goes through
    assert r.status == 201
    assert srv.uploads[name] == data
    assert srv.upload_received(name) == 1000 + len(data)


def test_cut_applies_to_chunked_bodies(srv: FaultServer) -> None:
    name = uname()
    with pytest.raises(CUT_ERRORS):
        call(srv, "POST", f"/upload/{name}?cut=70000", iter([os.urandom(50_000)] * 6))
    assert srv.upload_received(name) == 70_000
    assert name not in srv.uploads
    # A body no longer than N is not cut.
    ok = call(srv, "POST", f"/upload/{name}?cut=10", b"0123456789")
    assert ok.status == 200
    assert srv.uploads[name] == b"0123456789"


@pytest.mark.parametrize("chunked", [False, True])
def test_client_disconnect_mid_body_keeps_count_only(srv: FaultServer, chunked: bool) -> None:
    name = uname()
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 10000"
    body = b"%x\r\n" % 10000 + b"x" * 3000 if chunked else b"x" * 3000
    head = b"PUT /upload/" + name.encode() + b" HTTP/1.1\r\nHost: t\r\n" + framing + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as s:
        s.sendall(head + body)
        eventually(lambda: srv.upload_received(name) == 3000)
    time.sleep(0.05)
    assert srv.upload_received(name) == 3000
    assert name not in srv.uploads


def test_status_knob_reads_body_then_answers_on_same_connection(srv: FaultServer) -> None:
    name = uname()
    data = os.urandom(100_000)
    path = f"/upload/{name}?status=503&retry_after=7&times=1"
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=15)
    try:
        first = send(c, "POST", path, data)
        assert first.status == 503
        assert first.headers["retry-after"] == "7"
        assert_framed(first)
        assert name not in srv.uploads
        second = send(c, "POST", path, data)
        assert second.status == 200
    finally:
        c.close()
    assert srv.uploads[name] == data
    assert srv.upload_received(name) == 2 * len(data)
    log = srv.requests(f"/upload/{name}")
    assert log[0].connection == log[1].connection


def test_stall_knob(srv: FaultServer) -> None:
    name = uname()
    t0 = time.monotonic()
    r = call(srv, "PUT", f"/upload/{name}?stall=0.3", b"abc")
    assert r.status == 201
    assert time.monotonic() - t0 >= 0.3


def test_bad_knob_is_400_after_draining(srv: FaultServer) -> None:
    name = uname()
    r = call(srv, "PUT", f"/upload/{name}?cut=nope", b"12345")
    assert r.status == 400
    assert "cut" in r.body.decode()
    assert srv.upload_received(name) == 5


def test_expect_100_continue(srv: FaultServer) -> None:
    name = uname()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as s, s.makefile("rb") as f:
        s.sendall(
            f"PUT /upload/{name} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        assert f.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert f.readline() == b"\r\n"
        s.sendall(b"hello")
        assert f.readline().startswith(b"HTTP/1.1 201 ")
    eventually(lambda: srv.uploads.get(name) == b"hello")
    # Refused on its headers alone: a final answer without 100 Continue, then close.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as s, s.makefile("rb") as f:
        s.sendall(
            f"PUT /upload/{name} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
            "Content-Type: multipart/form-data\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        assert f.readline().startswith(b"HTTP/1.1 400 ")
        head = f.read().decode("latin-1").lower()
        assert "connection: close" in head


# --------------------------------------------------------------------------- multipart


def multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for field, filename, content in parts:
        disp = f'form-data; name="{field}"'
        extra = ""
        if filename is not None:
            disp += f'; filename="{filename}"'
            extra = "Content-Type: application/octet-stream\r\n"
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n{extra}\r\n".encode()
        out += content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_multipart_file_and_field(srv: FaultServer) -> None:
    name = uname()
    boundary = "bgt" + uuid.uuid4().hex
    blob = os.urandom(50_000) + b"\r\n--" + b"\r\n\r\n"
    body = multipart(boundary, [("title", None, "hello wörld".encode()), ("file", "a.bin", blob)])
    ctype = f'multipart/form-data; boundary="{boundary}"'
    r = call(srv, "POST", f"/upload/{name}", body, {"Content-Type": ctype})
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "name": name,
        "size": len(body),
        "sha256": sha256(body),
        "parts": [
            {"field": "title", "size": len("hello wörld".encode())},
            {
                "field": "file",
                "filename": "a.bin",
                "content_type": "application/octet-stream",
                "size": len(blob),
                "sha256": sha256(blob),
            },
        ],
        "fields": {"title": "hello wörld"},
    }
    assert srv.uploads[f"{name}/file"] == blob
    assert srv.upload_fields[name] == {"title": "hello wörld"}
    assert name not in srv.uploads
    assert srv.upload_complete(name)
    assert srv.upload_received(name) == len(body)
    srv.forget_upload(name)
    assert f"{name}/file" not in srv.uploads
    assert name not in srv.upload_fields


def test_multipart_errors(srv: FaultServer) -> None:
    name = uname()
    boundary = "xyz"
    whole = multipart(boundary, [("f", "a", b"data")])
    ctype = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    unterminated = whole[: -len(f"--{boundary}--\r\n") - 2]
    assert call(srv, "POST", f"/upload/{name}", unterminated, ctype).status == 400
    no_boundary = {"Content-Type": "multipart/form-data"}
    assert call(srv, "POST", f"/upload/{name}", whole, no_boundary).status == 400
    assert not srv.upload_complete(name)
    assert call(srv, "POST", f"/upload/{name}", whole, ctype).status == 200
    assert srv.uploads[f"{name}/f"] == b"data"


# --------------------------------------------------------------------------- tus


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def tus_create(srv: FaultServer, length: int, filename: str | None = None) -> str:
    headers = {**TUS, "Upload-Length": str(length)}
    if filename is not None:
        headers["Upload-Metadata"] = f"filename {b64(filename)},is_confidential"
    r = call(srv, "POST", "/tus/", b"", headers)
    assert r.status == 201, r.body
    assert r.headers["tus-resumable"] == "1.0.0"
    assert_framed(r)
    location = r.headers["location"]
    assert location.startswith(srv.base_url + "/tus/")
    return urlsplit(location).path


def tus_patch(
    srv: FaultServer,
    path: str,
    offset: int,
    data: bytes | Iterable[bytes],
    extra: dict[str, str] | None = None,
) -> Resp:
    headers = {**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset), **(extra or {})}
    return call(srv, "PATCH", path, data, headers)


def tus_offset(srv: FaultServer, path: str) -> int:
    r = call(srv, "HEAD", path, None, TUS)
    assert r.status == 200
    return int(r.headers["upload-offset"])


def test_tus_options(srv: FaultServer) -> None:
    r = call(srv, "OPTIONS", "/tus/")
    assert r.status == 204
    assert r.headers["tus-resumable"] == "1.0.0"
    assert r.headers["tus-version"] == "1.0.0"
    assert r.headers["tus-extension"] == "creation,checksum,termination"
    assert r.headers["tus-checksum-algorithm"] == "sha1,sha256"
    assert r.headers["tus-max-size"] == str(1 << 30)
    assert_framed(r)


def test_tus_creation_errors(srv: FaultServer) -> None:
    no_version = call(srv, "POST", "/tus/", b"", {"Upload-Length": "10"})
    assert no_version.status == 412
    assert no_version.headers["tus-version"] == "1.0.0"
    assert call(srv, "POST", "/tus/", b"", {"Tus-Resumable": "0.2.2"}).status == 412
    assert call(srv, "POST", "/tus/", b"", TUS).status == 400
    assert call(srv, "POST", "/tus/", b"", {**TUS, "Upload-Length": "x"}).status == 400
    too_big = call(srv, "POST", "/tus/", b"", {**TUS, "Upload-Length": str((1 << 30) + 1)})
    assert too_big.status == 413
    assert too_big.headers["tus-resumable"] == "1.0.0"
    bad_meta = {**TUS, "Upload-Length": "1", "Upload-Metadata": "filename ***"}
    assert call(srv, "POST", "/tus/", b"", bad_meta).status == 400
    assert call(srv, "GET", "/tus/", None, TUS).status == 405
    assert call(srv, "HEAD", "/tus/nope", None, TUS).status == 404


def test_tus_head_patch_and_checksums(srv: FaultServer) -> None:
    filename = uname("tus") + ".bin"
    data = os.urandom(10_000)
    path = tus_create(srv, len(data), filename)
    uid = path.rsplit("/", 1)[1]
    assert srv.tus_uploads[uid].name == filename
    assert srv.tus_uploads[uid].metadata == {"filename": filename.encode(), "is_confidential": b""}

    head = call(srv, "HEAD", path, None, TUS)
    assert head.status == 200
    assert head.headers["upload-offset"] == "0"
    assert head.headers["upload-length"] == str(len(data))
    assert head.headers["cache-control"] == "no-store"
    assert head.headers["tus-resumable"] == "1.0.0"
    assert head.headers["upload-metadata"].startswith("filename ")
    assert head.headers["content-length"] == "0"

    sent = 0
    first = tus_patch(srv, path, 0, data[:3000])
    sent += 3000
    assert first.status == 204
    assert first.headers["upload-offset"] == "3000"
    assert first.headers["tus-resumable"] == "1.0.0"
    assert_framed(first)

    wrong_type = tus_patch(srv, path, 3000, data[3000:4000], {"Content-Type": "text/plain"})
    sent += 1000
    assert wrong_type.status == 415
    wrong_offset = tus_patch(srv, path, 2000, data[2000:4000])
    sent += 2000
    assert wrong_offset.status == 409
    assert wrong_offset.headers["tus-resumable"] == "1.0.0"
    no_version = call(srv, "PATCH", path, b"", {"Content-Type": OCTETS, "Upload-Offset": "3000"})
    assert no_version.status == 412

    piece = data[3000:6000]
    bad_sum = {"Upload-Checksum": "sha1 " + b64(hashlib.sha1(b"other").digest())}
    mismatch = tus_patch(srv, path, 3000, piece, bad_sum)
    sent += len(piece)
    assert mismatch.status == 460
    assert mismatch.headers["tus-resumable"] == "1.0.0"
    assert tus_offset(srv, path) == 3000
    md5 = tus_patch(srv, path, 3000, piece, {"Upload-Checksum": "md5 " + b64(b"x" * 16)})
    sent += len(piece)
    assert md5.status == 400

    good_sha1 = {"Upload-Checksum": "sha1 " + b64(hashlib.sha1(piece).digest())}
    ok = tus_patch(srv, path, 3000, piece, good_sha1)
    sent += len(piece)
    assert ok.status == 204
    assert ok.headers["upload-offset"] == "6000"
    rest = data[6000:]
    good_sha256 = {"Upload-Checksum": "sha256 " + b64(hashlib.sha256(rest).digest())}
    last = tus_patch(srv, path, 6000, iter([rest[:1000], rest[1000:]]), good_sha256)
    sent += len(rest)
    assert last.status == 204
    assert last.headers["upload-offset"] == str(len(data))

    assert srv.tus_data(filename) == data
    assert srv.tus_data(uid) == data
    assert srv.upload_complete(filename)
    assert srv.upload_received(filename) == sent
    assert srv.upload_received(uid) == sent
    past_end = tus_patch(srv, path, len(data), b"x")
    assert past_end.status == 400
    assert srv.tus_data(uid) == data


def test_tus_overflow_with_chunked_body_is_rolled_back(srv: FaultServer) -> None:
    path = tus_create(srv, 100)
    uid = path.rsplit("/", 1)[1]
    assert tus_patch(srv, path, 0, b"a" * 40).status == 204
    r = tus_patch(srv, path, 40, iter([b"b" * 50, b"c" * 50]))
    assert r.status == 400
    assert srv.tus_data(uid) == b"a" * 40
    assert srv.upload_received(uid) == 140


def test_tus_cut_after_keeps_prefix(srv: FaultServer) -> None:
    data = os.urandom(200_000)
    path = tus_create(srv, len(data))
    uid = path.rsplit("/", 1)[1]
    srv.upload_faults(uid, cut_after=150_000)
    assert tus_patch(srv, path, 0, data[:100_000]).status == 204
    with pytest.raises(CUT_ERRORS):
        tus_patch(srv, path, 100_000, data[100_000:])
    assert tus_offset(srv, path) == 150_000
    assert srv.tus_data(uid) == data[:150_000]
    assert not srv.upload_complete(uid)
    # Once: the resumed PATCH goes through.
    r = tus_patch(srv, path, 150_000, data[150_000:])
    assert r.status == 204
    assert srv.tus_data(uid) == data
    assert srv.upload_complete(uid)
    assert srv.upload_received(uid) == len(data)


def test_tus_client_disconnect_keeps_received_bytes(srv: FaultServer) -> None:
    path = tus_create(srv, 10_000)
    uid = path.rsplit("/", 1)[1]
    with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as s:
        s.sendall(
            f"PATCH {path} HTTP/1.1\r\nHost: t\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: {OCTETS}\r\nUpload-Offset: 0\r\nContent-Length: 10000\r\n\r\n".encode()
            + b"z" * 4000
        )
        eventually(lambda: srv.upload_received(uid) == 4000)
    eventually(lambda: tus_offset(srv, path) == 4000)
    assert srv.tus_data(uid) == b"z" * 4000


def test_tus_lose_once(srv: FaultServer) -> None:
    filename = uname("lost")
    data = os.urandom(5000)
    path = tus_create(srv, len(data), filename)
    assert tus_patch(srv, path, 0, data[:2000]).status == 204
    srv.upload_faults(filename, lose_once=True)
    lost = call(srv, "HEAD", path, None, TUS)
    assert lost.status == 404
    assert lost.headers["tus-resumable"] == "1.0.0"
    assert call(srv, "HEAD", path, None, TUS).status == 404
    assert tus_patch(srv, path, 2000, data[2000:]).status == 404
    with pytest.raises(KeyError):
        srv.tus_data(filename)
    # The client starts over: a new upload under the same name.
    again = tus_create(srv, len(data), filename)
    assert again != path
    assert tus_patch(srv, again, 0, data).status == 204
    assert srv.tus_data(filename) == data
    assert srv.upload_received(filename) == 2000 + (len(data) - 2000) + len(data)

    srv.upload_faults(filename, lose_once=True)
    patch_lost = tus_patch(srv, again, len(data), b"")
    assert patch_lost.status == 404


def test_tus_conflict_and_status_once(srv: FaultServer) -> None:
    path = tus_create(srv, 30)
    uid = path.rsplit("/", 1)[1]
    srv.upload_faults(uid, conflict_once=True)
    assert tus_patch(srv, path, 0, b"a" * 10).status == 409
    assert tus_patch(srv, path, 0, b"a" * 10).status == 204
    srv.upload_faults(uid, status_once=503, retry_after="2")
    busy = tus_patch(srv, path, 10, b"b" * 10)
    assert busy.status == 503
    assert busy.headers["retry-after"] == "2"
    assert busy.headers["tus-resumable"] == "1.0.0"
    assert tus_offset(srv, path) == 10
    assert tus_patch(srv, path, 10, b"b" * 20).status == 204
    assert srv.tus_data(uid) == b"a" * 10 + b"b" * 20
    with pytest.raises(ValueError, match="status_once"):
        srv.upload_faults(uid, status_once=99)


def test_tus_delete_and_forget(srv: FaultServer) -> None:
    path = tus_create(srv, 10)
    deleted = call(srv, "DELETE", path, None, TUS)
    assert deleted.status == 204
    assert deleted.headers["tus-resumable"] == "1.0.0"
    assert call(srv, "HEAD", path, None, TUS).status == 404
    name = uname("forget")
    other = tus_create(srv, 10, name)
    srv.forget_upload(name)
    assert call(srv, "HEAD", other, None, TUS).status == 404
    assert tus_patch(srv, other, 0, b"x").status == 404


# --------------------------------------------------------------------------- IETF draft


def ietf_create(
    srv: FaultServer, name: str, body: bytes, *, complete: bool = False, length: int | None = None
) -> Resp:
    headers = {"Upload-Complete": "?1" if complete else "?0"}
    if length is not None:
        headers["Upload-Length"] = str(length)
    return call(srv, "POST", f"/ietf/{name}", body, headers)


def ietf_patch(
    srv: FaultServer,
    path: str,
    offset: int,
    body: bytes | Iterable[bytes],
    *,
    complete: bool,
    ctype: str = PARTIAL,
) -> Resp:
    headers = {
        "Content-Type": ctype,
        "Upload-Offset": str(offset),
        "Upload-Complete": "?1" if complete else "?0",
    }
    return call(srv, "PATCH", path, body, headers)


def ietf_location(srv: FaultServer, r: Resp) -> str:
    assert r.status == 201, r.body
    location = r.headers["location"]
    assert location.startswith(srv.base_url + "/ietf/u/")
    return urlsplit(location).path


def test_ietf_create_head_append_complete(srv: FaultServer) -> None:
    name = uname("ietf")
    data = os.urandom(9000)
    created = ietf_create(srv, name, data[:1000], length=len(data))
    path = ietf_location(srv, created)
    assert created.headers["upload-offset"] == "1000"
    assert_framed(created)

    head = call(srv, "HEAD", path)
    assert head.status == 204
    assert head.headers["upload-offset"] == "1000"
    assert head.headers["upload-complete"] == "?0"
    assert head.headers["upload-length"] == str(len(data))
    assert head.headers["cache-control"] == "no-store"

    assert ietf_patch(srv, path, 1000, b"x", complete=False, ctype=OCTETS).status == 415
    middle = ietf_patch(srv, path, 1000, data[1000:4000], complete=False)
    assert middle.status == 204
    assert middle.headers["upload-offset"] == "4000"
    assert_framed(middle)
    assert srv.ietf_data(name) == data[:4000]
    assert not srv.upload_complete(name)

    final = ietf_patch(srv, path, 4000, iter([data[4000:8000], data[8000:]]), complete=True)
    assert final.status == 200
    assert final.headers["content-type"] == "application/json"
    assert final.json() == {"name": name, "size": len(data), "sha256": sha256(data)}
    assert_framed(final)
    assert srv.ietf_data(name) == data
    assert srv.upload_complete(name)
    assert call(srv, "HEAD", path).headers["upload-complete"] == "?1"
    assert ietf_patch(srv, path, len(data), b"", complete=True).status == 400
    assert srv.upload_received(name) == len(data) + 1

    assert call(srv, "DELETE", path).status == 204
    assert call(srv, "HEAD", path).status == 404


def test_ietf_offset_mismatch_problem(srv: FaultServer) -> None:
    name = uname("ietf")
    path = ietf_location(srv, ietf_create(srv, name, b"a" * 100))
    r = ietf_patch(srv, path, 50, b"b" * 10, complete=False)
    assert r.status == 409
    assert r.headers["content-type"] == "application/problem+json"
    assert_framed(r)
    assert r.json() == {
        "type": "https://iana.org/assignments/http-problem-types#mismatching-upload-offset",
        "title": "offset from request does not match offset of resource",
        "expected-offset": 100,
        "provided-offset": 50,
    }
    assert srv.ietf_data(name) == b"a" * 100
    srv.upload_faults(name, conflict_once=True)
    injected = ietf_patch(srv, path, 100, b"b", complete=False)
    assert injected.status == 409
    assert injected.json()["expected-offset"] == 100  # type: ignore[index]
    assert ietf_patch(srv, path, 100, b"b", complete=True).status == 200
    assert srv.ietf_data(name) == b"a" * 100 + b"b"


def test_ietf_length_rules(srv: FaultServer) -> None:
    name = uname("ietf")
    assert ietf_create(srv, name, b"x" * 20, length=10).status == 400
    assert ietf_create(srv, name, b"x" * 5, complete=True, length=10).status == 400
    path = ietf_location(srv, ietf_create(srv, name, b"x" * 5, length=10))
    assert ietf_patch(srv, path, 5, b"y" * 6, complete=False).status == 400
    assert ietf_patch(srv, path, 5, iter([b"y" * 3, b"y" * 3]), complete=True).status == 400
    assert ietf_patch(srv, path, 5, b"y" * 3, complete=True).status == 400
    assert srv.ietf_data(name) == b"x" * 5
    assert ietf_patch(srv, path, 5, b"y" * 5, complete=True).status == 200
    bad_flag = {"Upload-Complete": "yes"}
    assert call(srv, "POST", f"/ietf/{name}", b"", bad_flag).status == 400


def test_ietf_single_request_and_plain_fallback(srv: FaultServer) -> None:
    name = uname("ietf")
    data = os.urandom(3000)
    done = ietf_create(srv, name, data, complete=True, length=len(data))
    assert done.status == 200
    assert done.json() == {"name": name, "size": len(data), "sha256": sha256(data)}
    assert srv.ietf_data(name) == data
    assert srv.upload_complete(name)
    plain = uname("ietf")
    r = call(srv, "POST", f"/ietf/{plain}", data)
    assert r.status == 200
    assert srv.uploads[plain] == data
    assert call(srv, "PUT", f"/ietf/{plain}", data).status == 405


def test_ietf_cut_after_keeps_prefix(srv: FaultServer) -> None:
    name = uname("ietf")
    data = os.urandom(120_000)
    srv.upload_faults(name, cut_after=70_000)
    path = ietf_location(srv, ietf_create(srv, name, b"", length=len(data)))
    with pytest.raises(CUT_ERRORS):
        ietf_patch(srv, path, 0, data, complete=True)
    head = call(srv, "HEAD", path)
    assert head.headers["upload-offset"] == "70000"
    assert head.headers["upload-complete"] == "?0"
    assert srv.ietf_data(name) == data[:70_000]
    r = ietf_patch(srv, path, 70_000, data[70_000:], complete=True)
    assert r.status == 200
    assert srv.ietf_data(name) == data
    assert srv.upload_received(name) == len(data)


def test_ietf_lose_once_and_resent_bytes_are_counted(srv: FaultServer) -> None:
    name = uname("ietf")
    data = os.urandom(50_000)
    srv.upload_faults(name, lose_once=True)
    path = ietf_location(srv, ietf_create(srv, name, data[:20_000]))
    assert call(srv, "HEAD", path).status == 404
    assert call(srv, "HEAD", path).status == 404
    with pytest.raises(KeyError):
        srv.ietf_data(name)
    # Start over from byte 0.
    assert ietf_create(srv, name, data, complete=True).status == 200
    assert srv.ietf_data(name) == data
    assert srv.upload_received(name) == 20_000 + len(data)


def test_ietf_status_once_and_forget(srv: FaultServer) -> None:
    name = uname("ietf")
    path = ietf_location(srv, ietf_create(srv, name, b"abc"))
    srv.upload_faults(name, status_once=503)
    assert ietf_patch(srv, path, 3, b"def", complete=False).status == 503
    assert srv.ietf_data(name) == b"abc"
    assert ietf_patch(srv, path, 3, b"def", complete=False).status == 204
    srv.forget_upload(name)
    assert call(srv, "HEAD", path).status == 404
    assert ietf_patch(srv, path, 6, b"", complete=True).status == 404
