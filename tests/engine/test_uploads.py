"""Uploads against the fault server's plain, multipart, tus and IETF-draft endpoints."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer import TaskState
from bgtransfer.testing import FaultServer

FAST: dict[str, Any] = {"retry_wait": 0.05, "max_retry_wait": 0.2}
MiB = 1 << 20


def source(tmp_path: Path, size: int, name: str = "src.bin") -> tuple[Path, bytes]:
    data = os.urandom(size)
    p = tmp_path / name
    p.write_bytes(data)
    return p, data


def test_plain_put_streams_the_file_and_keeps_the_answer(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    path, data = source(tmp_path, 3 * MiB)
    name = f"plain-{key}"
    t = session.upload(path, server.url(f"/upload/{name}"), **FAST).wait(timeout=60)
    assert t.state is TaskState.COMPLETED
    assert t.error is None, t.error
    assert server.uploads[name] == data
    assert t.kind == "upload"
    assert t.bytes_sent == t.bytes_expected == len(data)
    assert t.bytes_received == 0
    assert t.response_status in (200, 201)
    answer = json.loads(t.response_body or b"{}")
    assert answer["sha256"] == hashlib.sha256(data).hexdigest()
    assert path.read_bytes() == data  # the source is untouched


def test_put_is_retried_from_the_start(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    path, data = source(tmp_path, 2 * MiB)
    name = f"cut-{key}"
    t = session.upload(path, server.url(f"/upload/{name}?cut=500000&times=1"), **FAST)
    t.wait(timeout=60)
    assert t.error is None, t.error
    assert server.uploads[name] == data
    assert t.attempts == 2
    assert server.upload_received(name) == 500000 + len(data)


def test_post_without_a_key_is_not_silently_retried(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    path, _ = source(tmp_path, 2 * MiB)
    name = f"post-{key}"
    t = session.upload(
        path, server.url(f"/upload/{name}?cut=500000&times=1"), method="POST", **FAST
    )
    t.wait(timeout=60)
    assert isinstance(t.error, bgtransfer.ReadError)
    assert "POST is not retried" in str(t.error)
    assert t.attempts == 1
    assert name not in server.uploads
    posts = list(server.requests(f"/upload/{name}"))
    assert len(posts) == 1


def test_post_with_an_idempotency_key_is_retried(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    path, data = source(tmp_path, 2 * MiB)
    name = f"postkey-{key}"
    url = server.url(f"/upload/{name}?cut=500000&times=1")
    headers = {"Idempotency-Key": key}
    t = session.upload(path, url, method="POST", headers=headers, **FAST).wait(timeout=60)
    assert t.error is None, t.error
    assert server.uploads[name] == data
    reqs = server.requests(f"/upload/{name}")
    assert len(reqs) == 2
    assert all(r.headers.get("idempotency-key") == key for r in reqs)


def test_multipart_form(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    path, data = source(tmp_path, MiB, "photo.jpg")
    name = f"form-{key}"
    t = session.upload(
        path,
        server.url(f"/upload/{name}"),
        protocol="multipart",
        field_name="picture",
        form_fields={"album": "2026"},
        **FAST,
    ).wait(timeout=60)
    assert t.error is None, t.error
    assert server.uploads[f"{name}/picture"] == data
    assert server.upload_fields[name]["album"] == "2026"
    (req,) = server.requests(f"/upload/{name}")
    assert req.method == "POST"
    assert req.headers["content-type"].startswith("multipart/form-data")


@pytest.mark.parametrize("protocol", ["tus", "ietf"])
def test_resumable_upload_cut_midway_resends_little(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str, protocol: str
) -> None:
    size = 64 * MiB
    path, data = source(tmp_path, size, f"{protocol}-{key}.bin")
    name = path.name
    server.upload_faults(name, cut_after=20 * MiB)
    url = server.url("/tus/") if protocol == "tus" else server.url(f"/ietf/{name}")
    t = session.upload(path, url, protocol=protocol, **FAST).wait(timeout=120)
    assert t.error is None, t.error
    got = server.tus_data(name) if protocol == "tus" else server.ietf_data(name)
    assert got == data
    assert server.upload_complete(name)
    # The cut cost at most the chunk in flight, not the whole file again.
    assert server.upload_received(name) <= size + 8 * MiB
    assert t.attempts == 2
    assert t.bytes_sent == size


@pytest.mark.parametrize("protocol", ["tus", "ietf"])
def test_offset_conflict_and_lost_upload(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str, protocol: str
) -> None:
    path, data = source(tmp_path, 3 * MiB, f"c-{protocol}-{key}.bin")
    name = path.name
    server.upload_faults(name, conflict_once=True)
    url = server.url("/tus/") if protocol == "tus" else server.url(f"/ietf/{name}")
    t = session.upload(path, url, protocol=protocol, chunk_size=MiB, **FAST).wait(timeout=60)
    assert t.error is None, t.error
    assert (server.tus_data(name) if protocol == "tus" else server.ietf_data(name)) == data
    assert t.restarts == 0

    path2, data2 = source(tmp_path, 3 * MiB, f"l-{protocol}-{key}.bin")
    server.upload_faults(path2.name, lose_once=True, cut_after=MiB)
    url2 = server.url("/tus/") if protocol == "tus" else server.url(f"/ietf/{path2.name}")
    t2 = session.upload(path2, url2, protocol=protocol, chunk_size=MiB, **FAST).wait(timeout=60)
    assert t2.error is None, t2.error
    assert t2.restarts == 1
    got = server.tus_data(path2.name) if protocol == "tus" else server.ietf_data(path2.name)
    assert got == data2


def test_tus_suspend_resume_asks_the_server_for_its_offset(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    path, data = source(tmp_path, 16 * MiB, f"sr-{key}.bin")
    t = session.upload(path, server.url("/tus/"), protocol="tus", chunk_size=MiB, **FAST)
    deadline = time.monotonic() + 20
    while t.bytes_sent < 2 * MiB and time.monotonic() < deadline:
        time.sleep(0.005)
    t.suspend()
    assert t.state is TaskState.SUSPENDED
    t.resume()
    t.wait(timeout=60)
    assert t.error is None, t.error
    assert server.tus_data(path.name) == data
    assert server.upload_received(path.name) <= 17 * MiB


def test_source_changed_fails_clearly(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    path, _ = source(tmp_path, 16 * MiB, f"chg-{key}.bin")
    t = session.upload(path, server.url("/tus/"), protocol="tus", chunk_size=MiB, **FAST)
    deadline = time.monotonic() + 20
    while t.bytes_sent == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    t.suspend()
    with path.open("ab") as f:
        f.write(b"appended later")
    t.resume()
    t.wait(timeout=60)
    assert isinstance(t.error, bgtransfer.SourceChanged)
    assert "changed during the upload" in str(t.error)


def test_upload_bad_input(session: bgtransfer.Session, tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/upload/x"
    with pytest.raises(bgtransfer.InvalidRequest, match="cannot read the source"):
        session.upload(tmp_path / "missing", url)
    with pytest.raises(bgtransfer.InvalidRequest, match="not a regular file"):
        session.upload(tmp_path, url)
    path, _ = source(tmp_path, 10)
    with pytest.raises(bgtransfer.InvalidRequest, match="protocol"):
        session.upload(path, url, protocol="ftp")
    with pytest.raises(bgtransfer.InvalidRequest, match="method"):
        session.upload(path, url, method="BAD METHOD")
    with pytest.raises(bgtransfer.InvalidRequest, match="scheme"):
        session.upload(path, "file:///etc/x")
    assert session.tasks() == []
