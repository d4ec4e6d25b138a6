"""A worker cut off from PostgreSQL (its connections killed, again and again, for longer than
its lease) gives its tasks up by itself and comes back cleanly once the store answers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg

from bgtransfer._store._postgres import PostgresStore
from bgtransfer.testing import FaultServer
from tests.fleet.fleet import Fleet, completed_events, eventually, rows_for


def _cut_off(admin_url: str, app: str, seconds: float) -> int:
    """Kill every connection named ``app`` for ``seconds``; returns how many were killed."""
    killed = 0
    deadline = time.monotonic() + seconds
    with psycopg.connect(admin_url, autocommit=True) as con:
        while time.monotonic() < deadline:
            cur = con.execute(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (app,),
            )
            row = cur.fetchone()
            killed += 0 if row is None else int(row[0])
            time.sleep(0.05)
    return killed


def test_a_worker_cut_off_from_the_store_gives_up_and_comes_back(
    fleet: Fleet, pg: PostgresStore, server: FaultServer, tmp_path: Path, key: str
) -> None:
    data = os.urandom(800_000)
    url = server.add(f"cut-{key}", data) + "?rate=150000"
    out = tmp_path / "out"
    out.mkdir()
    (row,) = rows_for([url], out)
    pg.insert(row)
    fleet.url = f"{fleet.url}&application_name=w1"
    fleet.start("w1")

    def progressed() -> bool:
        got = pg.get(row.id)
        return got is not None and got.snap.offset > 0

    eventually(progressed, 20, "w1 commits progress")
    assert _cut_off(pg.path, "w1", 2 * fleet.lease) > 0
    eventually(lambda: "stopping its 1 task" in fleet.log("w1"), 10, "w1 gives up")
    # Back: it takes its own task over (its lease ran out) and resumes it.
    fleet.wait_done(pg, [row.id], 40)
    assert "the task store answers again" in fleet.log("w1")
    assert Path(row.path).read_bytes() == data
    assert completed_events(pg.path) == {row.id: 1}
    done = pg.get(row.id)
    assert done is not None
    assert done.snap.restarts == 0
    # And it claims new work as before.
    later = server.add(f"cut-{key}-later", b"x" * 1000)
    (tmp_path / "out2").mkdir()
    (row2,) = rows_for([later], tmp_path / "out2")
    pg.insert(row2)
    fleet.wait_done(pg, [row2.id], 20)
    assert fleet.stop("w1") == 0
