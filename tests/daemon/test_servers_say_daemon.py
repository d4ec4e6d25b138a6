"""Issue 11 item 14: a POST cut short by a daemon crash is not sent again."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import bgtransfer
from bgtransfer.testing import FaultServer

from .conftest import kill_daemon


def test_post_cut_by_a_daemon_crash_is_not_resent(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    src = tmp_path / "form.bin"
    src.write_bytes(os.urandom(256 << 10))
    name = f"crash-{key}"
    # The first POST is read whole and then held unanswered: the server may have acted on
    # it, and the client cannot know. A second POST would be answered at once.
    url = server.url(f"/upload/{name}?stall=20&times=1")
    with bgtransfer.Session("post", home=home) as s:
        t = s.upload(src, url, method="POST", retry_wait=0.05)
        deadline = time.monotonic() + 30
        while server.upload_received(name) < src.stat().st_size:
            assert time.monotonic() < deadline, "the POST never arrived"
            time.sleep(0.01)
        assert kill_daemon(home, signal.SIGKILL) is not None
        t.wait(timeout=60)  # starts the daemon again, which picks the task up
        assert isinstance(t.error, bgtransfer.ReadError), t.error
        assert "POST is not retried" in str(t.error)
        assert t.attempts == 1
    posts = [r for r in server.requests(f"/upload/{name}") if r.method == "POST"]
    assert len(posts) == 1


def test_post_with_an_idempotency_key_is_resent_after_a_crash(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    src = tmp_path / "form.bin"
    data = os.urandom(256 << 10)
    src.write_bytes(data)
    name = f"crashkey-{key}"
    url = server.url(f"/upload/{name}?stall=20&times=1")
    with bgtransfer.Session("post", home=home) as s:
        t = s.upload(src, url, method="POST", headers={"Idempotency-Key": key}, retry_wait=0.05)
        deadline = time.monotonic() + 30
        while server.upload_received(name) < len(data):
            assert time.monotonic() < deadline, "the POST never arrived"
            time.sleep(0.01)
        assert kill_daemon(home, signal.SIGKILL) is not None
        t.wait(timeout=60)
        assert t.error is None, t.error
    assert server.uploads[name] == data
    posts = [r for r in server.requests(f"/upload/{name}") if r.method == "POST"]
    assert len(posts) == 2


def test_tus_checksums_go_on_after_a_daemon_restart(
    server: FaultServer, home: Path, tmp_path: Path
) -> None:
    data = os.urandom(6 << 20)
    src = tmp_path / f"tus-{os.urandom(4).hex()}.bin"
    src.write_bytes(data)
    server.upload_faults(src.name, cut_after=2 << 20)
    with bgtransfer.Session("tus", home=home) as s:
        t = s.upload(src, server.url("/tus/"), protocol="tus", chunk_size=1 << 20, retry_wait=30.0)
        deadline = time.monotonic() + 30
        while "retrying" not in t.detail:  # parked after the cut, upload URL on record
            assert time.monotonic() < deadline, t.detail
            time.sleep(0.01)
        killed_at = time.monotonic()
        assert kill_daemon(home, signal.SIGKILL) is not None
        t.wait(timeout=60)  # a new daemon picks the upload up at once
        assert t.error is None, t.error
    assert server.tus_data(src.name) == data
    after = [r for r in server.requests("/tus") if r.time > killed_at]
    patches = [r for r in after if r.method == "PATCH"]
    assert len(patches) >= 4
    assert all(r.headers.get("upload-checksum", "").startswith("sha") for r in patches)
    assert any(r.method == "OPTIONS" for r in after)  # asked again, not forgotten
