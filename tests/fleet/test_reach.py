"""Paths are paths every worker should see; a worker that cannot write a task's directory
gives the task back with the reason, leaves it alone for a while, and another worker runs
it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bgtransfer._store._postgres import PostgresStore
from bgtransfer.testing import FaultServer
from tests.fleet.fleet import Fleet, eventually, rows_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs a worker as nobody (root only)")


def test_a_task_this_worker_cannot_write_is_left_for_another(
    fleet: Fleet, pg: PostgresStore, server: FaultServer, tmp_path: Path, key: str
) -> None:
    data = os.urandom(50_000)
    url = server.add(f"reach-{key}", data)
    os.chmod(tmp_path, 0o755)  # nobody may look in, not write
    out = tmp_path / "rootonly"
    out.mkdir(mode=0o755)
    (row,) = rows_for([url], out)
    pg.insert(row)
    fleet.start("nobody", as_nobody=True)

    def given_back() -> bool:
        got = pg.get(row.id)
        return got is not None and "on this worker" in got.snap.detail

    eventually(given_back, 20, "the worker that cannot write gives the task back")
    assert pg.lease(row.id) == (None, None, 1)
    got = pg.get(row.id)
    assert got is not None
    assert got.snap.phase.value == "queued"
    time.sleep(fleet.lease)  # sweeps (every second) and notifications come: it stays away
    assert pg.lease(row.id) == (None, None, 1)
    fleet.start("root")
    fleet.wait_done(pg, [row.id], 20)
    assert Path(row.path).read_bytes() == data
    assert fleet.stop("nobody") == 0
    assert fleet.stop("root") == 0
