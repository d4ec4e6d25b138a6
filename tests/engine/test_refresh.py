"""Expired links (issue 17): a signed URL that dies mid-transfer, a refresh hook that gives a
new one, and what becomes of the bytes already fetched. Against the real fault server's
signed URLs (``/s/...``: an S3-style 403 once the byte budget or the time is spent), a real
foreground engine and real files; the server's request log is the witness."""

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
from bgtransfer._protocol._signed import MAX_REFRESHES_IN_A_ROW
from bgtransfer.testing import FaultServer

FAST: dict[str, Any] = {"retry_wait": 0.05, "max_retry_wait": 0.2}
SIZE = 1 << 20


def signed_requests(server: FaultServer, name: str) -> list[Any]:
    return [r for r in server.requests("/s/r/" + name) if r.method == "GET"]


class Minter:
    """A refresh callable: each call mints a new signed URL of ``path`` (with a budget)."""

    def __init__(self, server: FaultServer, path: str, **sign: Any) -> None:
        self.server, self.path, self.sign = server, path, sign
        self.calls: list[dict[str, Any]] = []

    def __call__(self, info: Any) -> dict[str, Any]:
        self.calls.append(dict(info))
        return {"url": self.server.sign_url(self.path, **self.sign)}


def test_a_url_that_expires_after_n_bytes_is_refreshed_and_the_bytes_are_kept(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path
) -> None:
    data = os.urandom(SIZE)
    name = f"exp-{os.urandom(4).hex()}"
    server.add(name, data)
    first = server.sign_url(f"/r/{name}", max_bytes=300_000)
    minter = Minter(server, f"/r/{name}")
    dest = tmp_path / "out.bin"
    task = session.download(first, dest, refresh=minter, **FAST).wait(timeout=60)
    assert task.state is TaskState.COMPLETED, task.error
    assert dest.read_bytes() == data
    assert len(minter.calls) == 1
    call = minter.calls[0]
    assert call["status"] == 403
    assert call["task_id"] == task.id
    # The request to the new URL asked for the rest, under If-Range: the bytes were kept.
    gets = signed_requests(server, name)
    sig = first.split("X-Amz-Signature=")[1]
    new = [r for r in gets if r.query.get("X-Amz-Signature") not in (None, sig)]
    assert new, "no request went to the refreshed URL"
    assert new[0].headers.get("range") == "bytes=300000-"
    assert new[0].headers.get("if-range")
    history = task.history()
    outcomes = [a["outcome"] for a in history]
    assert any("URL refreshed" in o and "300000 bytes kept" in o for o in outcomes), outcomes
    # The signature is a secret: never in the history.
    assert all("X-Amz-Signature=***" in a["url"] for a in history if "X-Amz" in a["url"])
    assert not any(first.split("X-Amz-Signature=")[1] in a["url"] for a in history)


def test_a_refresh_to_another_representation_restarts_cleanly(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path
) -> None:
    data = os.urandom(SIZE)
    name = f"chg-{os.urandom(4).hex()}"
    server.add(name, data)
    first = server.sign_url(f"/r/{name}", max_bytes=200_000)
    new_data = bytes(b ^ 0x5A for b in data)

    def refresh(info: Any) -> dict[str, Any]:
        server.replace(name, new_data)  # the resource changed behind the new URL
        return {"url": server.sign_url(f"/r/{name}")}

    dest = tmp_path / "out.bin"
    task = session.download(first, dest, refresh=refresh, **FAST).wait(timeout=60)
    assert task.state is TaskState.COMPLETED, task.error
    assert dest.read_bytes() == new_data  # never old bytes under new ones
    outcomes = [a["outcome"] for a in task.history()]
    assert any("URL refreshed" in o and "restarting from 0" in o for o in outcomes), outcomes


def test_refresh_before_expiry_from_x_amz_expires(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path
) -> None:
    data = os.urandom(SIZE // 4)
    name = f"soon-{os.urandom(4).hex()}"
    server.add(name, data)
    # Valid for 10 s: within the 30 s margin, so no request goes to it at all.
    first = server.sign_url(f"/r/{name}", expires_in=10)
    minter = Minter(server, f"/r/{name}", expires_in=3600)
    dest = tmp_path / "out.bin"
    task = session.download(first, dest, refresh=minter, **FAST).wait(timeout=60)
    assert task.state is TaskState.COMPLETED, task.error
    assert dest.read_bytes() == data
    assert len(minter.calls) == 1
    assert minter.calls[0]["status"] is None
    sig = first.split("X-Amz-Signature=")[1]
    assert not [r for r in signed_requests(server, name) if r.query.get("X-Amz-Signature") == sig]


def test_refreshes_are_bounded(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path
) -> None:
    data = os.urandom(SIZE // 4)
    name = f"bound-{os.urandom(4).hex()}"
    server.add(name, data)
    first = server.sign_url(f"/r/{name}", max_bytes=10_000)
    # Every new URL is dead on arrival (no byte budget): the hook is asked a bounded number
    # of times, then the task fails with a clear error.
    minter = Minter(server, f"/r/{name}", max_bytes=0)
    dest = tmp_path / "out.bin"
    task = session.download(first, dest, refresh=minter, **FAST).wait(timeout=60)
    assert task.state is TaskState.COMPLETED
    assert isinstance(task.error, bgtransfer.RefreshFailed), task.error
    assert "403" in task.error.message
    assert "refreshed" in task.error.message
    assert len(minter.calls) == MAX_REFRESHES_IN_A_ROW
    assert not dest.exists()


def test_a_refresh_callable_that_raises_fails_the_task_clearly(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path
) -> None:
    name = f"raise-{os.urandom(4).hex()}"
    server.add(name, os.urandom(SIZE // 4))
    first = server.sign_url(f"/r/{name}", max_bytes=10_000)

    def refresh(info: Any) -> dict[str, Any]:
        raise PermissionError("the signing service said no")

    task = session.download(first, tmp_path / "o", refresh=refresh, **FAST).wait(timeout=60)
    assert isinstance(task.error, bgtransfer.RefreshFailed)
    assert "PermissionError: the signing service said no" in task.error.message


def test_a_first_403_is_a_refusal_not_an_expiry(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path
) -> None:
    name = f"deny-{os.urandom(4).hex()}"
    server.add(name, b"x" * 100)
    dead = server.sign_url(f"/r/{name}", max_bytes=0)
    minter = Minter(server, f"/r/{name}")
    task = session.download(dead, tmp_path / "o", refresh=minter, **FAST).wait(timeout=60)
    assert isinstance(task.error, bgtransfer.HTTPStatusError)
    assert task.error.status_code == 403
    assert minter.calls == []


def test_a_callable_refresh_in_a_background_session_is_refused(
    tmp_path: Path, daemon_home: Path
) -> None:
    refused = pytest.raises(bgtransfer.InvalidRequest, match="callable runs only in a foreground")
    with bgtransfer.Session("t", home=daemon_home, background=True) as s, refused:
        s.download("http://127.0.0.1:9/x", tmp_path / "x", refresh=lambda info: {})


def test_refresh_answers_are_checked(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path
) -> None:
    name = f"bad-{os.urandom(4).hex()}"
    server.add(name, os.urandom(SIZE // 4))
    first = server.sign_url(f"/r/{name}", max_bytes=10_000)
    task = session.download(first, tmp_path / "o", refresh=lambda info: {"link": "x"}, **FAST).wait(
        timeout=60
    )
    assert isinstance(task.error, bgtransfer.RefreshFailed)
    assert "unknown keys ['link']" in task.error.message


def test_the_refreshed_url_is_durable(server: FaultServer, tmp_path: Path) -> None:
    """A foreground session closed after a refresh: the next one goes on with the new URL
    (stored in the snapshot) and its hook is not needed for that."""
    data = os.urandom(4 * SIZE)
    name = f"dur-{os.urandom(4).hex()}"
    server.add(name, data)
    first = server.sign_url(f"/r/{name}", max_bytes=100_000)
    minter = Minter(server, f"/r/{name}")
    dest = tmp_path / "out.bin"
    home = tmp_path / "home"
    with bgtransfer.Session("t", home=home, background=False) as s:
        task = s.download(first, dest, refresh=minter, max_rate=512 << 10, **FAST)
        deadline = time.monotonic() + 30
        while not minter.calls or task.bytes_received < 200_000:
            assert time.monotonic() < deadline, "no refresh"
            time.sleep(0.02)
        task.suspend()
        task_id = task.id
    with bgtransfer.Session("t", home=home, background=False) as s:
        again = s.task(task_id)
        again.resume()
        done = again.wait(timeout=60)
        history = done.history()
    assert done.state is TaskState.COMPLETED
    assert done.error is None, (done.error, history)
    assert dest.read_bytes() == data
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert len(minter.calls) == 1
    outcomes = [a["outcome"] for a in history]
    assert sum("URL refreshed" in o for o in outcomes) == 1, outcomes
    json.dumps(history)


def test_a_segmented_download_survives_its_url_expiring(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path
) -> None:
    data = os.urandom(8 << 20)
    name = f"seg-{os.urandom(4).hex()}"
    server.add(name, data)
    first = server.sign_url(f"/r/{name}", max_bytes=3 << 20)
    minter = Minter(server, f"/r/{name}")
    dest = tmp_path / "out.bin"
    task = session.download(first, dest, refresh=minter, segments=4, **FAST).wait(timeout=60)
    assert task.error is None, task.error
    assert dest.read_bytes() == data
    assert 1 <= len(minter.calls) <= 2
    # Never from 0 again: every request to a new URL asked for a range past the first bytes.
    sig = first.split("X-Amz-Signature=")[1]
    later = [r for r in signed_requests(server, name) if r.query.get("X-Amz-Signature") != sig]
    assert later
    assert all(r.headers.get("range", "bytes=0-").split("=")[1][0] != "0" for r in later[:1])
