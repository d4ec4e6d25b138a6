"""Expiring signed URLs on the test server: expiry by clock and by bytes, and refresh."""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from bgtransfer.testing import FaultServer, gen_bytes

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


def raw_get(url: str) -> tuple[bytes, bytes]:
    """(head, body bytes that arrived before the server closed): sees a cut body whole."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        for _ in range(10_000):
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def resource(srv: FaultServer, data: bytes) -> str:
    name = f"s-{uuid.uuid4().hex[:8]}"
    srv.add(name, data)
    return "/r/" + name


@pytest.mark.parametrize("style", ["amz", "token"])
def test_signed_url_serves_the_same_representation(srv: FaultServer, style: str) -> None:
    data = gen_bytes(5000, 1)
    path = resource(srv, data)
    url = srv.sign_url(path, style=style)
    q = parse_qs(urlsplit(url).query)
    if style == "amz":
        assert {"X-Amz-Date", "X-Amz-Expires", "X-Amz-Signature"} <= q.keys()
    else:
        assert {"token", "expires"} <= q.keys()
    _, plain_headers, _ = get(srv.url(path))
    status, headers, body = get(url, {"Range": "bytes=10-19"})
    assert status == 206
    assert body == data[10:20]
    assert headers["ETag"] == plain_headers["ETag"]


def test_expired_amz_url_is_403_with_an_s3_error(srv: FaultServer) -> None:
    url = srv.sign_url(resource(srv, b"abc"), expires_in=-5)
    q = parse_qs(urlsplit(url).query)
    assert int(q["X-Amz-Expires"][0]) >= 1
    status, headers, body = get(url)
    assert status == 403
    assert headers["Content-Type"] == "application/xml"
    assert b"<Code>AccessDenied</Code>" in body
    assert b"expired" in body


def test_url_expires_by_the_clock(srv: FaultServer) -> None:
    url = srv.sign_url(resource(srv, b"abc"), expires_in=2.0, style="token")
    assert get(url)[0] == 200
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    deadline = time.monotonic() + 5
    while time.time() < expires + 0.05 and time.monotonic() < deadline:
        time.sleep(0.05)
    status, _, body = get(url)
    assert status == 403
    assert b"expired" in body


def test_tampered_or_unknown_tokens_are_refused(srv: FaultServer) -> None:
    path = resource(srv, b"abc")
    url = srv.sign_url(path, style="token", expires_in=60)
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    later = dict(q, expires=str(int(q["expires"]) + 3600))
    assert get(srv.url(f"/s{path}?{urlencode(later)}"))[0] == 403
    other = resource(srv, b"other")
    assert get(srv.url(f"/s{other}?{urlencode(q)}"))[0] == 403
    assert get(srv.url(f"/s{path}"))[0] == 403
    assert get(srv.url(f"/s{path}?token=00&expires=1"))[0] == 403
    assert get(srv.url(f"/s{path}?token=00&expires=soon"))[0] == 400


def test_byte_budget_cuts_the_transfer_then_403(srv: FaultServer) -> None:
    data = gen_bytes(10_000, 2)
    url = srv.sign_url(resource(srv, data), max_bytes=4000)
    head, body = raw_get(url)
    assert b" 200 " in head.split(b"\r\n")[0]
    assert b"Content-Length: 10000" in head
    assert body == data[:4000]  # the link died mid-body
    assert srv.signed_served(url) == 4000
    status, _, _ = get(url, {"Range": "bytes=4000-"})
    assert status == 403


def test_byte_budget_spans_requests(srv: FaultServer) -> None:
    data = gen_bytes(3000, 3)
    url = srv.sign_url(resource(srv, data), max_bytes=2500, style="token")
    status, _, body = get(url, {"Range": "bytes=0-1999"})
    assert (status, body) == (206, data[:2000])
    _, body = raw_get(url)
    assert body == data[:500]
    assert srv.signed_served(url) == 2500
    assert get(url)[0] == 403


def test_mint_endpoint_same_representation_and_changed(srv: FaultServer) -> None:
    data = gen_bytes(4000, 4)
    path = resource(srv, data)
    _, first_headers, _ = get(srv.url(path))
    status, headers, body = get(srv.url("/sign?" + urlencode({"path": path, "max_bytes": 100})))
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    minted = json.loads(body)
    assert minted["expires"] > time.time()
    status, headers, body = get(minted["url"], {"Range": "bytes=0-99"})
    assert (status, body) == (206, data[:100])
    assert headers["ETag"] == first_headers["ETag"]
    # change=1: the same path now has another representation of the same length.
    query = urlencode({"path": path, "change": 1, "style": "token"})
    changed = json.loads(get(srv.url("/sign?" + query))[2])
    status, headers, body = get(changed["url"])
    assert status == 200
    assert len(body) == len(data)
    assert body != data
    assert headers["ETag"] != first_headers["ETag"]


def test_signed_gen_path_keeps_its_knobs(srv: FaultServer) -> None:
    url = srv.sign_url("/gen/2K?seed=9", style="token")
    status, _, body = get(url)
    assert (status, body) == (200, gen_bytes(2048, 9))


def test_mint_rejects_bad_input(srv: FaultServer) -> None:
    assert get(srv.url("/sign?path=/echo"))[0] == 400
    assert get(srv.url("/sign?path=/r/x&style=azure"))[0] == 400
    assert get(srv.url("/sign?path=/gen/1K&change=1"))[0] == 400
    assert get(srv.url("/sign?path=/r/no-such&change=1"))[0] == 404
    with pytest.raises(ValueError, match="style"):
        srv.sign_url("/r/x", style="gcs")
