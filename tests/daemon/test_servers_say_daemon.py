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
