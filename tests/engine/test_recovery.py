"""Recovery in the engine: what a crash left on disk, fed to the machine (through handle()).

The decisions are tested without a file in tests/protocol/test_recovery.py; these tests make
the states a crash leaves (with a real store, real files, a real server) and check that the
engine reads the disk and carries out what the machine decides, on each path that recovers:
a foreground session finding its dead owner's task, and the daemon picking a task up.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import bgtransfer
from bgtransfer import TaskState
from bgtransfer._engine._engine import Engine
from bgtransfer._models import Phase
from bgtransfer._store._base import TaskRow
from bgtransfer._store._sqlite import SQLiteStore
from bgtransfer._tasks import build_row
from bgtransfer._trust import prepare_home
from bgtransfer.testing import FaultServer, gen_bytes

STORE = "bgtransfer.sqlite3"
SIZE = 256 << 10


def as_if_placed_before_the_crash(home: Path) -> None:
    """The store as a crash between placing the file and committing its completion leaves
    it: the save finalize makes before the rename (phase verifying, every byte counted)."""
    con = sqlite3.connect(home / STORE)
    with con:
        con.execute(
            "UPDATE tasks SET phase='verifying', detail='verifying', finished_at=NULL, owner=NULL"
        )
    con.close()


def gets(server: FaultServer, key: str) -> int:
    return len([r for r in server.requests("/gen/") if r.query.get("key") == key])


def test_a_session_finds_a_file_placed_before_the_crash_complete(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    origin = gen_bytes(SIZE, seed=21)
    home, dest = tmp_path / "home", tmp_path / "placed.bin"
    with bgtransfer.Session("placed", home=home, background=False) as s:
        task = s.download(server.url(f"/gen/{SIZE}?seed=21&key={key}"), dest)
        task.wait(timeout=60)
        assert task.error is None
    as_if_placed_before_the_crash(home)
    with bgtransfer.Session("placed", home=home, background=False) as s:
        (task,) = s.tasks()
        assert task.state is TaskState.COMPLETED
        assert task.detail == "completed"
        assert task.bytes_received == SIZE
    assert dest.read_bytes() == origin
    assert gets(server, key) == 1  # nothing fetched again
    con = sqlite3.connect(home / STORE)
    (phase,) = con.execute("SELECT phase FROM tasks").fetchone()  # the completion was stored
    con.close()
    assert phase == "done"


async def _daemon_run(home: Path, row: TaskRow | None, *, recover: bool) -> TaskRow:
    """A background engine that submits ``row`` (or, with ``recover``, picks up what the
    store holds) and returns the task once finished."""
    prepare_home(str(home))
    store = SQLiteStore(os.path.join(home, STORE))
    engine = Engine(store, str(home), background=True)
    await engine.start()
    try:
        if row is not None:
            engine.submit(row)
            task_id = row.id
        else:
            (stored,) = store.list("placed")
            task_id = stored.id
        if recover:
            engine.recover_background()
        return await asyncio.wait_for(engine.wait(task_id), 30)
    finally:
        await engine.close()
        store.close()


def test_the_daemon_finds_a_file_placed_before_the_crash_complete(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    """The daemon's path: requeued at its start, found placed when picked up (``_admit``),
    completed without a request."""
    origin = gen_bytes(SIZE, seed=22)
    home, dest = tmp_path / "home", tmp_path / "placed.bin"
    url = server.url(f"/gen/{SIZE}?seed=22&key={key}")
    row = build_row("placed", url, str(dest), background=True)
    asyncio.run(_daemon_run(home, row, recover=False))
    as_if_placed_before_the_crash(home)
    done = asyncio.run(_daemon_run(home, None, recover=True))
    assert done.snap.phase is Phase.DONE
    assert done.snap.detail == "completed"
    assert done.snap.offset == SIZE
    assert dest.read_bytes() == origin
    assert gets(server, key) == 1


async def _stop_the_daemon_mid_transfer(home: Path, row: TaskRow) -> None:
    prepare_home(str(home))
    store = SQLiteStore(os.path.join(home, STORE))
    engine = Engine(store, str(home), background=True)
    await engine.start()
    try:
        engine.submit(row)
        for _ in range(400):  # bounded: 20 s
            if engine.get(row.id).snap.offset > 0:
                break
            await asyncio.sleep(0.05)
    finally:
        await engine.close()
        store.close()


def test_a_stopping_daemon_keeps_every_byte_it_wrote(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    """``close()`` of the daemon's engine: the task stays running (Detached), with the
    offset it reached stored, so the next daemon resumes from there."""
    home, dest = tmp_path / "home", tmp_path / "big.bin"
    url = server.url(f"/gen/{8 << 20}?seed=23&rate=2000000&key={key}")
    row = build_row("stop", url, str(dest), background=True)
    asyncio.run(_stop_the_daemon_mid_transfer(home, row))
    store = SQLiteStore(os.path.join(home, STORE))
    try:
        stored = store.get(row.id)
    finally:
        store.close()
    assert stored is not None
    assert stored.snap.phase is Phase.TRANSFERRING  # left running for the next daemon
    assert 0 < stored.snap.offset < 8 << 20
    # Every byte written is counted: nothing past the offset in the file.
    assert os.path.getsize(stored.partial) == stored.snap.offset
    assert not dest.exists()


def test_a_segmented_download_whose_file_vanished_unplaced_starts_over_whole(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Every segment was done, then the partial file went away before it was placed: the
    download starts over from 0 with a new segment table, and the file is whole."""
    size = 4 << 20  # two segments at least (MIN_SEGMENT is 1 MiB, two of them per split)
    origin = gen_bytes(size, seed=24)
    home, dest = tmp_path / "home", tmp_path / "seg.bin"
    with bgtransfer.Session("seg", home=home, background=False) as s:
        task = s.download(server.url(f"/gen/{size}?seed=24&key={key}"), dest, segments=4)
        task.wait(timeout=60)
        assert task.error is None
    store = SQLiteStore(os.path.join(home, STORE))
    try:
        done = store.get(task.id)
    finally:
        store.close()
    assert done is not None
    assert len(done.snap.segments) > 1  # it was segmented (the table is kept when done)
    as_if_placed_before_the_crash(home)
    dest.unlink()  # not placed after all: neither the partial file nor the target is there
    before = gets(server, key)
    with bgtransfer.Session("seg", home=home, background=False) as s:
        (task,) = s.tasks()
        assert task.state is TaskState.SUSPENDED
        assert task.bytes_received == 0
    store = SQLiteStore(os.path.join(home, STORE))
    try:
        stored = store.get(task.id)
    finally:
        store.close()
    assert stored is not None
    # Nothing the old table describes is on disk (the old engine kept it, all done).
    assert (stored.snap.offset, stored.snap.total, stored.snap.segments) == (0, None, ())
    assert gets(server, key) == before
    with bgtransfer.Session("seg", home=home, background=False) as s:
        (task,) = s.tasks()
        task.resume()
        task.wait(timeout=60)
        assert task.error is None
    assert dest.read_bytes() == origin
    assert gets(server, key) > before
