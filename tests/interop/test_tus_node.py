"""tus uploads to tus-node-server (npm ``@tus/server`` + ``@tus/file-store``), the tus
project's own server: what it stored and its request log decide, not our task's word."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer import TaskState
from bgtransfer.testing._thirdparty import CutProxy
from bgtransfer.testing._tusnode import TusNode
from tests.daemon.conftest import kill_daemon

from .conftest import FAST, committed

MiB = 1 << 20


def source(tmp_path: Path, key: str, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / f"up-{key}.bin"
    path.write_bytes(data)
    return path, data


def requests_of(tus: TusNode, filename: str) -> list[dict[str, Any]]:
    """The log lines of the upload created for ``filename`` (its POST, then every request to
    its URL), in order."""
    log = tus.log()
    post = [
        e
        for e in log
        if e["m"] == "POST"
        and TusNode.metadata_filename(e["h"].get("upload-metadata", "")) == filename
    ]
    assert len(post) == 1, f"{len(post)} uploads created for {filename}"  # never a second
    url = post[0]["a"]["location"].split("://", 1)[1].split("/", 1)[1]
    return [post[0], *(e for e in log if e["u"] == "/" + url)]


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_an_upload_completes_byte_exact(tus_node: TusNode, tmp_path: Path, key: str) -> None:
    path, data = source(tmp_path, key, 3 * MiB)
    with bgtransfer.Session("interop", home=tmp_path / "home", background=False) as s:
        t = s.upload(path, tus_node.url, protocol="tus", chunk_size=MiB, **FAST)
        t.wait(timeout=60)
    assert t.error is None, t.error
    assert t.response_status == 204
    assert tus_node.stored(path.name) == data
    reqs = requests_of(tus_node, path.name)
    assert reqs[0]["h"]["upload-length"] == str(3 * MiB)
    patches = [e for e in reqs if e["m"] == "PATCH"]
    assert [e["h"]["upload-offset"] for e in patches] == ["0", str(MiB), str(2 * MiB)]
    assert [e["a"]["upload-offset"] for e in patches] == [str(MiB), str(2 * MiB), str(3 * MiB)]
    # The server offers no checksum extension (OPTIONS), so none is sent and none is needed.
    options = [e for e in tus_node.log() if e["m"] == "OPTIONS"]
    assert options
    assert "checksum" not in options[-1]["a"]["tus-extension"]
    assert "termination" in options[-1]["a"]["tus-extension"]
    assert all("upload-checksum" not in e["h"] for e in patches)


def test_a_patch_cut_mid_body_resumes_from_what_the_server_kept(
    tus_node: TusNode, tmp_path: Path, key: str
) -> None:
    """The relay cuts the client's bytes in the middle of the second PATCH. The server keeps
    what it received (an offset no chunk boundary gives), says so to HEAD, and the next
    PATCH starts exactly there."""
    path, data = source(tmp_path, key, 4 * MiB)
    with (
        CutProxy(tus_node.port, after=MiB + MiB // 2, direction="request") as proxy,
        bgtransfer.Session("interop", home=tmp_path / "home", background=False) as s,
    ):
        t = s.upload(path, proxy.url("/files/"), protocol="tus", chunk_size=MiB, **FAST)
        t.wait(timeout=60)
    assert t.error is None, t.error
    assert proxy.cut == 1
    assert tus_node.stored(path.name) == data
    reqs = requests_of(tus_node, path.name)
    heads = [i for i, e in enumerate(reqs) if e["m"] == "HEAD" and i > 1]
    assert heads, reqs
    kept = int(reqs[heads[-1]]["a"]["upload-offset"])
    assert MiB < kept < 2 * MiB  # part of the cut chunk was kept
    after = [e for e in reqs[heads[-1] :] if e["m"] == "PATCH"]
    assert after[0]["h"]["upload-offset"] == str(kept)
    sent = sum(int(e["h"]["content-length"]) for e in reqs if e["m"] == "PATCH")
    assert sent <= 4 * MiB + MiB  # at most the cut chunk's rest again


@pytest.mark.parametrize("how", ["sigkill", "suspend"])
def test_an_upload_goes_on_from_the_servers_offset(
    tus_node: TusNode, home: Path, tmp_path: Path, key: str, how: str
) -> None:
    """The daemon is SIGKILLed (or the task suspended) mid-upload; the upload URL is in the
    store, so the same upload goes on: HEAD, then PATCH from the offset it answered."""
    size, chunk = 4 * MiB, MiB
    path, data = source(tmp_path, key, size)
    with bgtransfer.Session("interop", home=home) as s:
        t = s.upload(path, tus_node.url, protocol="tus", chunk_size=chunk, max_rate=2 * MiB)
        wait_for(lambda: committed(home, t.id) >= 2 * MiB, 30, "two chunks confirmed")
        if how == "sigkill":
            assert kill_daemon(home, signal.SIGKILL) is not None
        else:
            t.suspend()
            assert t.state is TaskState.SUSPENDED
            t.resume()
        t.wait(timeout=60)
        assert t.error is None, t.error
    assert tus_node.stored(path.name) == data
    reqs = requests_of(tus_node, path.name)
    heads = [i for i, e in enumerate(reqs) if e["m"] == "HEAD"]
    assert len(heads) >= 2  # after the creation, and after the interruption
    answered = int(reqs[heads[-1]]["a"]["upload-offset"])
    assert answered >= 2 * MiB
    nxt = next(e for e in reqs[heads[-1] :] if e["m"] == "PATCH")
    assert int(nxt["h"]["upload-offset"]) == answered
    sent = sum(int(e["h"]["content-length"]) for e in reqs if e["m"] == "PATCH")
    assert sent <= size + chunk  # not everything again: at most one chunk


def test_cancel_terminates_the_upload_on_the_server(
    tus_node: TusNode, tmp_path: Path, key: str
) -> None:
    path, _ = source(tmp_path, key, 8 * MiB)
    with bgtransfer.Session("interop", home=tmp_path / "home", background=False) as s:
        t = s.upload(path, tus_node.url, protocol="tus", chunk_size=MiB, max_rate=2 * MiB)
        wait_for(lambda: t.bytes_sent >= MiB, 30, "a chunk confirmed")
        upload = tus_node.upload_id(path.name)
        t.cancel()
        assert isinstance(t.error, bgtransfer.Cancelled)
        wait_for(
            lambda: any(e["m"] == "DELETE" for e in requests_of(tus_node, path.name)),
            3,  # a best-effort DELETE goes out at once, or not at all
            "the termination request",
        )
    deletes = [e for e in requests_of(tus_node, path.name) if e["m"] == "DELETE"]
    assert [e["s"] for e in deletes] == [204]
    assert not (tus_node.files / upload).exists()
    req = urllib.request.Request(
        f"http://127.0.0.1:{tus_node.port}/files/{upload}",
        method="HEAD",
        headers={"Tus-Resumable": "1.0.0"},
    )
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(req, timeout=10)
    gone.value.close()
    assert gone.value.code in (404, 410)
