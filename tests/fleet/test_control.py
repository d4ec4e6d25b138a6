"""A client suspends or cancels a task a worker is running: the client records the request
and notifies (the client side's store, ``request_control``); the worker applies it through
its own fenced commit and gives the task back."""

from __future__ import annotations

import os
from pathlib import Path

from bgtransfer._store._postgres import PostgresStore
from bgtransfer.testing import FaultServer
from tests.fleet.fleet import Fleet, eventually, rows_for


def test_a_client_suspends_and_cancels_running_tasks(
    fleet: Fleet, pg: PostgresStore, server: FaultServer, tmp_path: Path, key: str
) -> None:
    urls = [server.add(f"ctl-{key}-{i}", os.urandom(600_000)) + "?rate=100000" for i in range(2)]
    a, b = rows_for(urls, tmp_path)
    pg.insert_many([a, b])
    fleet.start("w1")

    def running(row_id: str) -> bool:
        got = pg.get(row_id)
        return got is not None and got.snap.offset > 0

    eventually(lambda: running(a.id) and running(b.id), 20, "both run")
    assert pg.request_control(a.id, "suspend")
    assert pg.request_control(b.id, "cancel")

    def applied() -> bool:
        ga, gb = pg.get(a.id), pg.get(b.id)
        # The worker saves each phase, then gives the lease back in a second statement.
        return (
            ga is not None and ga.snap.phase.value == "suspended"
            and gb is not None and gb.snap.phase.value == "done"
            and (pg.lease(a.id) or (1,))[0] is None
            and (pg.lease(b.id) or (1,))[0] is None
        )  # fmt: skip

    eventually(applied, 15, "the worker applies both")
    ga = pg.get(a.id)
    assert ga is not None
    assert ga.snap.offset > 0  # stopped at a checkpoint, resumable
    assert (pg.lease(a.id) or (1,))[0] is None  # given back
    assert (pg.lease(b.id) or (1,))[0] is None
    assert not Path(b.partial).exists()  # a cancel removes the partial file
    assert fleet.stop("w1") == 0
