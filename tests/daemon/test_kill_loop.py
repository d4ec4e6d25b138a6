"""The daemon's promise: SIGKILL at any moment loses at most a checkpoint, corrupts nothing."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest

import bgtransfer
from bgtransfer._client import DaemonClient
from bgtransfer.testing import FaultServer, gen_bytes

from .conftest import daemon_pid, kill_daemon


def start(home: Path) -> None:
    async def go() -> None:
        c = DaemonClient(str(home))
        try:
            await c.ensure_running()
        finally:
            await c.close()

    asyncio.run(go())


def check(home: Path, dest: Path, origin: bytes) -> tuple[str, int, int]:
    con = sqlite3.connect(f"file:{home / 'bgtransfer.sqlite3'}?mode=ro", uri=True)
    try:
        (integrity,) = con.execute("PRAGMA integrity_check").fetchone()
        rows = con.execute('SELECT id, phase, "offset", partial FROM tasks').fetchall()
    finally:
        con.close()
    assert integrity == "ok"
    assert len(rows) == 1, "a task was lost or duplicated"
    _task_id, phase, offset, partial = rows[0]
    if phase == "done":
        assert dest.read_bytes() == origin
        assert not os.path.exists(partial)
        return phase, offset, len(rows)
    assert not dest.exists(), "partial data visible under the target name"
    if os.path.exists(partial):
        data = Path(partial).read_bytes()
        assert offset <= len(data), f"committed {offset} > partial size {len(data)}"
        assert data[:offset] == origin[:offset], "partial prefix differs from the origin"
    else:
        assert offset == 0
    return phase, offset, len(rows)


def kill_loop(server: FaultServer, home: Path, tmp: Path, key: str, kills: int) -> None:
    size = 24 << 20
    origin = gen_bytes(size, seed=11)
    dest = tmp / "loop.bin"
    url = server.url(f"/gen/{size}?seed=11&rate=4000000&key={key}")
    with bgtransfer.Session("loop", home=home) as s:
        task = s.download(url, dest, retry_wait=0.05, max_retry_wait=0.2)
        task_id = task.id
    rng = random.Random(kills)
    done, offsets = 0, []
    deadline = time.monotonic() + 60 + kills * 2.5
    while done < kills and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.2, 1.8))  # checkpoints come every 1 s
        pid = kill_daemon(home, signal.SIGKILL)
        assert pid is not None
        done += 1
        phase, offset, _ = check(home, dest, origin)
        offsets.append(offset)
        if phase == "done":
            # Finished before the loop did: start over with a fresh file, fresh task.
            dest.unlink()
            con = sqlite3.connect(home / "bgtransfer.sqlite3")
            con.execute("DELETE FROM tasks")
            con.commit()
            con.close()
            start(home)
            with bgtransfer.Session("loop", home=home) as s:
                task_id = s.download(url, dest, retry_wait=0.05).id
            continue
        start(home)
    assert done >= kills, f"only {done} kills in time"
    assert max(offsets) > 0
    with bgtransfer.Session("loop", home=home) as s:
        t = s.task(task_id).wait(timeout=120)
        assert t.error is None
    assert dest.read_bytes() == origin
    check(home, dest, origin)
    assert daemon_pid(home) is not None


def test_kill_loop_20(server: FaultServer, home: Path, tmp_path: Path, key: str) -> None:
    kill_loop(server, home, tmp_path, key, kills=20)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_kill_loop_200(server: FaultServer, home: Path, tmp_path: Path, key: str) -> None:
    kill_loop(server, home, tmp_path, key, kills=200)
