"""Checksum sidecars (``.sha256``, ``SHA256SUMS``) and Metalink 4 documents on the test server."""

from __future__ import annotations

import hashlib
import http.client
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from bgtransfer.testing import FaultServer, gen_bytes

pytestmark = pytest.mark.timeout(60)
NS = {"m": "urn:ietf:params:xml:ns:metalink"}


@pytest.fixture(scope="module")
def srv() -> Iterator[FaultServer]:
    with FaultServer(other_host=True) as server:
        yield server


def get(
    url: str, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=20)
    try:
        conn.request(
            "GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {}
        )
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- sidecars


def test_sha256_sidecar_next_to_a_resource(srv: FaultServer) -> None:
    folder = uuid.uuid4().hex[:8]
    data = gen_bytes(3000, 1)
    url = srv.add(f"{folder}/file.bin", data)
    status, headers, body = get(url + ".sha256")
    assert status == 200
    assert body == f"{sha(data)}  file.bin\n".encode()
    assert headers["ETag"]


def test_sidecar_follows_a_new_version(srv: FaultServer) -> None:
    name = f"v-{uuid.uuid4().hex[:8]}"
    url = srv.add(name, b"one")
    srv.replace(name, b"two!")
    assert get(url + ".sha256")[2] == f"{sha(b'two!')}  {name}\n".encode()


def test_sha256sums_lists_the_files_of_one_folder(srv: FaultServer) -> None:
    folder = uuid.uuid4().hex[:8]
    files = {"b.bin": b"bee", "a.bin": b"ay", "sub/c.bin": b"deeper"}
    for n, d in files.items():
        srv.add(f"{folder}/{n}", d)
    status, _, body = get(srv.url(f"/r/{folder}/SHA256SUMS"))
    assert status == 200
    assert body.decode() == f"{sha(b'ay')}  a.bin\n{sha(b'bee')}  b.bin\n"


def test_a_real_resource_wins_over_a_sidecar(srv: FaultServer) -> None:
    name = f"w-{uuid.uuid4().hex[:8]}"
    srv.add(name, b"data")
    srv.add(name + ".sha256", b"0" * 64 + b"  wrong\n")
    assert get(srv.url(f"/r/{name}.sha256"))[2] == b"0" * 64 + b"  wrong\n"


def test_gen_sidecar_and_missing_base(srv: FaultServer) -> None:
    status, _, body = get(srv.url("/gen/2K.sha256?seed=5"))
    assert (status, body) == (200, f"{sha(gen_bytes(2048, 5))}  2K\n".encode())
    assert get(srv.url(f"/r/nothing-{uuid.uuid4().hex}.sha256"))[0] == 404


# --------------------------------------------------------------------------- metalink


def parse(doc: bytes) -> ET.Element:
    root = ET.fromstring(doc)
    assert root.tag == "{urn:ietf:params:xml:ns:metalink}metalink"
    file = root.find("m:file", NS)
    assert file is not None
    return file


def test_metalink_lists_mirrors_size_hash_and_pieces(srv: FaultServer) -> None:
    data = gen_bytes(10_000, 7)
    name = f"m-{uuid.uuid4().hex[:8]}.bin"
    srv.add(name, data)
    status, headers, doc = get(srv.url(f"/metalink/r/{name}?mirrors=3&piece=4K"))
    assert status == 200
    assert headers["Content-Type"] == "application/metalink4+xml"
    file = parse(doc)
    assert file.get("name") == name
    assert file.findtext("m:size", namespaces=NS) == "10000"
    assert file.findtext("m:hash[@type='sha-256']", namespaces=NS) == sha(data)
    pieces = file.find("m:pieces", NS)
    assert pieces is not None
    assert (pieces.get("length"), pieces.get("type")) == ("4096", "sha-256")
    want = [sha(data[i : i + 4096]) for i in range(0, len(data), 4096)]
    assert [h.text for h in pieces.findall("m:hash", NS)] == want
    urls = file.findall("m:url", NS)
    assert [u.get("priority") for u in urls] == ["1", "2", "3"]
    assert srv.other_base_url is not None
    assert urls[0].text == srv.url(f"/r/{name}")
    assert (urls[1].text or "").startswith(srv.other_base_url)
    for u in urls:
        status, _, body = get(u.text or "")
        assert (status, body) == (200, data)


def test_metalink_liar_mirror_serves_other_bytes(srv: FaultServer) -> None:
    status, _, doc = get(srv.url("/metalink/gen/3000?seed=2&mirrors=3&liar=3&liar_etag=1"))
    assert status == 200
    urls = [u.text or "" for u in parse(doc).findall("m:url", NS)]
    assert all(parse_qs(urlsplit(u).query)["seed"] == ["2"] for u in urls)
    truth = gen_bytes(3000, 2)
    _, good_headers, good = get(urls[0])
    _, liar_headers, lie = get(urls[2])
    assert good == truth
    assert len(lie) == len(truth)
    assert lie != truth
    assert liar_headers["ETag"] == good_headers["ETag"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/metalink/echo", 404),
        ("/metalink/gen/1K?mirrors=0", 400),
        ("/metalink/gen/1K?mirrors=2&liar=3", 400),
        ("/metalink/gen/1K?piece=0", 400),
        ("/metalink/r/none-such", 404),
    ],
)
def test_metalink_bad_requests(srv: FaultServer, path: str, status: int) -> None:
    assert get(srv.url(path))[0] == status


def test_other_host_lies_on_the_same_path(srv: FaultServer) -> None:
    data = gen_bytes(2500, 11)
    name = f"o-{uuid.uuid4().hex[:8]}"
    srv.add(name, data)
    assert srv.other_base_url is not None
    other = f"{srv.other_base_url}/r/{name}"
    srv.other_host_lies("etag")
    try:
        _, true_headers, truth = get(srv.url(f"/r/{name}"))
        _, lie_headers, lie = get(other)
    finally:
        srv.other_host_lies(None)
    assert truth == data
    assert len(lie) == len(data)
    assert lie != data
    assert lie_headers["ETag"] == true_headers["ETag"]
    assert get(other)[2] == data
    with pytest.raises(ValueError, match="mode"):
        srv.other_host_lies("sometimes")


def test_sign_url_refuses_an_infinite_lifetime(srv: FaultServer) -> None:
    with pytest.raises(ValueError, match="finite"):
        srv.sign_url("/gen/1K", expires_in=float("inf"))
    assert get(srv.url("/sign?path=/gen/1K&expires_in=nan"))[0] == 400
