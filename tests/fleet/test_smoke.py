"""The simplest fleet: one worker takes a queue of small downloads and completes each once."""

from __future__ import annotations

from pathlib import Path

from bgtransfer._store._postgres import PostgresStore
from bgtransfer.testing import FaultServer
from tests.fleet.fleet import Fleet, completed_events, rows_for


def test_one_worker_runs_the_queue(
    fleet: Fleet, pg: PostgresStore, server: FaultServer, tmp_path: Path
) -> None:
    data = [bytes([i]) * (1000 + i) for i in range(5)]
    urls = [server.add(f"smoke-{i}", d) for i, d in enumerate(data)]
    out = tmp_path / "out"
    out.mkdir()
    rows = rows_for(urls, out)
    pg.insert_many(rows)
    fleet.start("w1")
    fleet.wait_done(pg, [r.id for r in rows], 20)
    for r, d in zip(rows, data, strict=True):
        assert Path(r.path).read_bytes() == d
    assert completed_events(fleet.url) == {r.id: 1 for r in rows}
    assert fleet.stop("w1") == 0
    assert pg.workers() == []  # it left the list
