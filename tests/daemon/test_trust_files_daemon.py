"""Issue 11, "Files", through the daemon: a real daemon subprocess, killed and restarted;
a home on a small tmpfs that fills up."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer import TaskState
from bgtransfer._client import DaemonClient
from bgtransfer.testing import FaultServer, gen_bytes

from .conftest import kill_daemon

SIZE = 1 << 20


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def committed(home: Path, task_id: str) -> int:
    """The offset on record in the store (what a restarted daemon starts from)."""
    from bgtransfer._store._sqlite import SQLiteStore

    store = SQLiteStore(str(home / "bgtransfer.sqlite3"))
    try:
        row = store.get(task_id)
        return 0 if row is None else row.snap.offset
    finally:
        store.close()


@pytest.fixture
def restore_umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


# -- item 7 -----------------------------------------------------------------------------------


def test_partial_swapped_between_daemon_runs_is_not_adopted(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "k.bin"
    size = 4 * SIZE
    victim = tmp_path / "victim"
    with bgtransfer.Session("swap", home=home) as s:
        t = s.download(server.url(f"/gen/{size}?rate=1000000&key={key}"), dest)
        wait_for(lambda: committed(home, t.id) > 0, "a checkpoint")
        kill_daemon(home)
        [name] = [p for p in os.listdir(tmp_path) if p.endswith(".bgtransfer-part")]
        partial = tmp_path / name
        victim.write_bytes(b"x" * partial.stat().st_size)
        os.unlink(partial)
        os.link(victim, partial)  # same size, someone else's inode
        again = s.task(t.id)  # starts the daemon again
        again.wait(timeout=60)
        rows = again.history()
    assert again.error is None, again.error
    assert dest.read_bytes() == gen_bytes(size)
    assert victim.read_bytes() == b"x" * victim.stat().st_size
    assert victim.stat().st_nlink == 1
    assert again.restarts == 0  # nothing to restart: the bytes on record were discarded
    assert rows[-1]["range_start"] is None  # from 0, not appended to the foreign file


# -- item 8 -----------------------------------------------------------------------------------


def test_mode_follows_the_submitting_clients_umask_not_the_daemons(
    server: FaultServer, home: Path, tmp_path: Path, key: str, restore_umask: None
) -> None:
    os.umask(0o077)
    with bgtransfer.Session("mode", home=home) as s:
        first = s.download(server.url(f"/gen/{SIZE}?key={key}"), tmp_path / "a.bin")
        first.wait(timeout=60)  # the daemon was started under umask 077
        os.umask(0o022)
        second = s.download(server.url(f"/gen/{SIZE}?key={key}"), tmp_path / "b.bin")
        second.wait(timeout=60)
    assert first.error is None
    assert second.error is None
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o644


# -- item 9 -----------------------------------------------------------------------------------


def test_relative_path_lands_in_the_callers_cwd_not_the_daemons(
    server: FaultServer,
    home: Path,
    tmp_path: Path,
    key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with bgtransfer.Session("rel", home=home) as s:
        t = s.download(server.url(f"/gen/{SIZE}?key={key}"), "rel.bin")
        t.wait(timeout=60)
        many = s.download_many([{"url": server.url(f"/gen/{SIZE}?key={key}"), "path": "m.bin"}])
        many[0].wait(timeout=60)
    assert t.error is None
    assert t.path == str(work / "rel.bin")
    assert (work / "rel.bin").read_bytes() == gen_bytes(SIZE)
    assert (work / "m.bin").read_bytes() == gen_bytes(SIZE)
    assert not Path("/rel.bin").exists()
    assert not Path("/m.bin").exists()


def test_daemon_api_refuses_a_relative_path(home: Path, key: str) -> None:
    async def submit() -> None:
        c = DaemonClient(str(home))
        await c.ensure_running()
        await c.call(
            "POST",
            "/v1/tasks",
            body={"session": "r", "url": "http://127.0.0.1:9/x", "path": f"rel-{key}.bin"},
        )

    with pytest.raises(bgtransfer.InvalidRequest, match="absolute"):
        asyncio.run(submit())


# -- item 16 ----------------------------------------------------------------------------------


def test_history_keeps_the_request_a_daemon_crash_cut_short(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "h.bin"
    size = 4 * SIZE
    with bgtransfer.Session("hist", home=home) as s:
        t = s.download(server.url(f"/gen/{size}?rate=1000000&key={key}"), dest)
        wait_for(lambda: committed(home, t.id) > 0, "a checkpoint")
        kill_daemon(home)
        again = s.task(t.id)
        again.wait(timeout=60)
        rows = again.history()
    assert again.error is None
    assert dest.read_bytes() == gen_bytes(size)
    assert len(rows) == 2, rows
    cut, resumed = rows
    assert cut["outcome"].startswith("interrupted"), cut
    assert cut["status"] == 200
    assert cut["bytes"] > 0
    assert cut["ended_at"] is not None
    assert resumed["range_start"] is not None
    assert resumed["range_start"] > 0
    assert resumed["outcome"] != "in progress"


def test_upload_attempts_through_the_daemon(
    server: FaultServer, home: Path, tmp_path: Path
) -> None:
    src = tmp_path / "u.bin"
    src.write_bytes(gen_bytes(SIZE))
    with bgtransfer.Session("up", home=home) as s:
        t = s.upload(src, server.url("/tus/"), protocol="tus")
        t.wait(timeout=60)
        rows = t.history()
    assert t.error is None, t.error
    assert len(rows) == 1
    assert rows[0]["bytes"] == SIZE
    assert rows[0]["outcome"] == "completed"


# -- item 10: the home's disk is full -----------------------------------------------------------


@pytest.fixture
def tmpfs_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "small-home"
    home.mkdir(mode=0o700)
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(home)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs for the home: {exc}")
    try:
        yield home
    finally:
        kill_daemon(home)
        subprocess.run(["umount", "-l", str(home)], check=False, timeout=30)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no byte left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (1 << 16, 4096, 512, 1):
            for _ in range(100_000):  # bounded: 4 MiB / 64 KiB is far below this
                try:
                    os.write(fd, b"\0" * block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def test_full_home_suspends_tasks_keeps_partials_and_resumes_from_their_bytes(
    server: FaultServer, tmpfs_home: Path, tmp_path: Path, key: str
) -> None:
    home = tmpfs_home
    size = 6 * SIZE
    dests = [tmp_path / f"full{i}.bin" for i in range(2)]
    with bgtransfer.Session("full", home=home) as s:
        tasks = [
            s.download(server.url(f"/gen/{size}?rate=400000&key={key}{i}"), d)
            for i, d in enumerate(dests)
        ]
        wait_for(lambda: all(committed(home, t.id) > 0 for t in tasks), "checkpoints")
        filler = fill(home)

        def all_suspended() -> bool:
            return all(s.task(t.id).state is TaskState.SUSPENDED for t in tasks)

        wait_for(all_suspended, "the tasks suspended for the full disk")
        for t in tasks:
            seen = s.task(t.id)
            assert "full" in seen.detail, seen.detail
            assert seen.error is None
        parts = [p for p in os.listdir(tmp_path) if p.endswith(".bgtransfer-part")]
        assert len(parts) == 2
        assert all((tmp_path / p).stat().st_size > 0 for p in parts)
        # A new task is refused with a clear, typed error; nothing is half-made.
        with pytest.raises(bgtransfer.StoreFull, match="full"):
            s.download(server.url(f"/gen/{SIZE}?key={key}x"), tmp_path / "refused.bin")
        with pytest.raises(bgtransfer.StoreFull):
            s.task(tasks[0].id).cancel()
        time.sleep(1.5)  # a while with no space: still nothing failed, nothing deleted
        assert all(s.task(t.id).state is TaskState.SUSPENDED for t in tasks)
        assert len([p for p in os.listdir(tmp_path) if p.endswith(".bgtransfer-part")]) == 2

        os.unlink(filler)
        done = [s.task(t.id).wait(timeout=120) for t in tasks]
        histories = [t.history() for t in done]
    for t, d, rows in zip(done, dests, histories, strict=True):
        assert t.error is None, t.error
        assert d.read_bytes() == gen_bytes(size)
        assert t.restarts == 0
        # Every request after the first resumed from bytes on disk: no download from 0.
        assert rows[0]["range_start"] is None
        assert all(r["range_start"] for r in rows[1:]), rows
        assert len(rows) >= 2, rows


def raw_submit(home: Path, body: dict[str, Any]) -> Any:
    async def go() -> Any:
        c = DaemonClient(str(home))
        return await c.call("POST", "/v1/tasks", body=body)

    return asyncio.run(go())


def test_full_home_submit_gets_a_json_error(
    server: FaultServer, tmpfs_home: Path, tmp_path: Path, key: str
) -> None:
    home = tmpfs_home
    with bgtransfer.Session("j", home=home) as s:
        t = s.download(server.url(f"/gen/{4 * SIZE}?rate=300000&key={key}"), tmp_path / "j.bin")
        wait_for(lambda: committed(home, t.id) > 0, "a checkpoint")
        filler = fill(home)
        wait_for(lambda: s.task(t.id).state is TaskState.SUSPENDED, "the suspension")
        body = {"session": "j", "url": server.url("/gen/1"), "path": str(tmp_path / "x")}
        with pytest.raises(bgtransfer.StoreFull) as info:
            raw_submit(home, body)
        assert info.value.code == "store_full"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(filler)
        again = s.task(t.id).wait(timeout=120)
    assert again.error is None


def test_another_process_closing_the_store_keeps_the_daemons_commits(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    """Found on the way: the engine's second store connection opened and closed the store
    file, which dropped the daemon's POSIX locks on it; the next process to close a
    connection (a foreground session, a reader) then deleted the WAL under the daemon, and
    every later commit of the daemon was lost at its next start."""
    import sqlite3

    dest = tmp_path / "w.bin"
    with bgtransfer.Session("wal", home=home) as s:
        t = s.download(server.url(f"/gen/{2 * SIZE}?rate=2000000&key={key}"), dest)
        reader = sqlite3.connect(home / "bgtransfer.sqlite3")
        reader.execute("SELECT COUNT(*) FROM tasks").fetchall()
        reader.close()
        t.wait(timeout=60)
    assert t.error is None
    kill_daemon(home)
    db = sqlite3.connect(home / "bgtransfer.sqlite3")
    try:
        [(phase, offset)] = db.execute('SELECT phase, "offset" FROM tasks').fetchall()
    finally:
        db.close()
    assert (phase, offset) == ("done", 2 * SIZE)


def test_full_home_with_nothing_running_takes_submits_again_once_freed(
    server: FaultServer, tmpfs_home: Path, tmp_path: Path, key: str
) -> None:
    """Found full by a submit while no task runs: nothing is left for the writer to retry,
    so the engine itself notices the space coming back."""
    home = tmpfs_home
    with bgtransfer.Session("idle", home=home) as s:
        s.download(server.url(f"/gen/{SIZE}?key={key}"), tmp_path / "first.bin").wait(timeout=60)
        filler = fill(home)
        refused = 0
        for n in range(50):  # bounded: each insert grows the WAL until it cannot
            try:
                s.download(server.url(f"/gen/1?key={key}"), tmp_path / f"n{n}.bin")
            except bgtransfer.StoreFull:
                refused += 1
                break
        assert refused == 1
        with pytest.raises(bgtransfer.StoreFull):  # stays refused while there is no room
            s.download(server.url(f"/gen/1?key={key}"), tmp_path / "again.bin")
        os.unlink(filler)
        deadline = time.monotonic() + 30
        t: bgtransfer.Task | None = None
        while t is None:
            try:
                t = s.download(server.url(f"/gen/{SIZE}?key={key}"), tmp_path / "later.bin")
            except bgtransfer.StoreFull:
                assert time.monotonic() < deadline, "submits still refused with space back"
                time.sleep(0.2)
        t.wait(timeout=60)
    assert t.error is None
    assert (tmp_path / "later.bin").read_bytes() == gen_bytes(SIZE)


def test_cli_get_sends_its_umask(
    server: FaultServer, home: Path, tmp_path: Path, key: str, restore_umask: None
) -> None:
    from .conftest import run_cli

    os.umask(0o077)
    with bgtransfer.Session("cli", home=home) as s:  # the daemon starts under umask 077
        s.download(server.url(f"/gen/1?key={key}"), tmp_path / "warm").wait(timeout=60)
    os.umask(0o022)  # the CLI process, and only it, has 022
    r = run_cli(home, "get", server.url(f"/gen/{SIZE}?key={key}"), "-o", str(tmp_path / "c.bin"))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "c.bin").stat().st_mode) == 0o644
