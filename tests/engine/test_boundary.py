"""Bad input is refused at download() with InvalidRequest, and no task is created."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer import TaskState
from bgtransfer.testing import FaultServer, gen_bytes

GOOD = "http://127.0.0.1:9/x"


@pytest.mark.parametrize(
    ("url", "kwargs", "needle"),
    [
        ("ftp://127.0.0.1/x", {}, "ftp"),
        ("file:///etc/passwd", {}, "file"),
        ("http:///nohost", {}, "no host"),
        ("http://127.0.0.1:99999/x", {}, "99999"),
        ("http://127.0.0.1/a b", {}, "a b"),
        ("not a url", {}, "not a url"),
        (GOOD, {"headers": {"Bad Name": "v"}}, "Bad Name"),
        (GOOD, {"headers": {"X-Ok": "a\r\nInjected: 1"}}, "X-Ok"),
        (GOOD, {"headers": {"X-Ok": "nul\0"}}, "X-Ok"),
        (GOOD, {"headers": {"Range": "bytes=5-"}}, "Range"),
        (GOOD, {"request_timeout": 0}, "request_timeout"),
        (GOOD, {"request_timeout": -1}, "request_timeout"),
        (GOOD, {"resource_timeout": float("nan")}, "resource_timeout"),
        (GOOD, {"resource_timeout": float("inf")}, "resource_timeout"),
        (GOOD, {"request_timeout": "5"}, "'5'"),
        (GOOD, {"sha256": "abc"}, "abc"),
        (GOOD, {"sha256": "z" * 64}, "zzzz"),
    ],
)
def test_invalid_request_names_the_value_and_creates_no_task(
    session: bgtransfer.Session, tmp_path: Path, url: str, kwargs: dict[str, Any], needle: str
) -> None:
    with pytest.raises(bgtransfer.InvalidRequest, match=None) as info:
        session.download(url, tmp_path / "x.bin", **kwargs)
    assert isinstance(info.value, ValueError)
    assert needle in str(info.value)
    assert session.tasks() == []
    assert list(tmp_path.iterdir()) == [tmp_path / "home"]


def test_bad_targets(session: bgtransfer.Session, tmp_path: Path) -> None:
    with pytest.raises(bgtransfer.InvalidRequest, match="directory"):
        session.download(GOOD, tmp_path)
    with pytest.raises(bgtransfer.InvalidRequest, match="does not exist"):
        session.download(GOOD, tmp_path / "missing" / "x.bin")
    (tmp_path / "taken").write_bytes(b"x")
    with pytest.raises(bgtransfer.InvalidRequest, match="already exists"):
        session.download(GOOD, tmp_path / "taken")
    assert session.tasks() == []


def test_unknown_task_id(session: bgtransfer.Session) -> None:
    with pytest.raises(bgtransfer.TaskNotFound):
        session.task("nope")


def test_bad_session_arguments(tmp_path: Path) -> None:
    with pytest.raises(bgtransfer.InvalidRequest, match="identifier"):
        bgtransfer.Session("", home=tmp_path, background=False)
    with pytest.raises(bgtransfer.InvalidRequest, match="max_active"):
        bgtransfer.Session("x", home=tmp_path, background=False, max_active=0)


def test_home_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BGTRANSFER_HOME", str(tmp_path / "envhome"))
    with bgtransfer.Session("x", background=False) as s:
        assert s.home == str(tmp_path / "envhome")
    assert (tmp_path / "envhome" / "bgtransfer.sqlite3").exists()
    assert (tmp_path / "envhome").stat().st_mode & 0o777 == 0o700


def test_closing_a_session_leaves_tasks_resumable(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 4 << 20
    home, dest = tmp_path / "h", tmp_path / "c.bin"
    with bgtransfer.Session("close", home=home, background=False) as s:
        t = s.download(server.url(f"/gen/{size}?rate=4000000&key={key}"), dest)
        deadline = time.monotonic() + 10
        while t.bytes_received < 300_000 and time.monotonic() < deadline:
            time.sleep(0.02)
    with bgtransfer.Session("close", home=home, background=False) as s2:
        (again,) = s2.tasks()
        assert again.state is TaskState.SUSPENDED
        assert "interrupted: the session was closed" in again.detail
        kept = again.bytes_received
        assert kept > 0
        again.resume()
        again.wait(timeout=30)
        assert again.error is None
    assert dest.read_bytes() == gen_bytes(size)
    last = [r for r in server.requests("/gen/") if r.query.get("key") == key][-1]
    assert last.range == f"bytes={kept}-"
