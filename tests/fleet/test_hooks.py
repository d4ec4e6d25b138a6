"""Exactly one completion per task, and its hook: run once by the worker that completed it;
at least once when that worker dies while the hook runs (BGTRANSFER_TASK_ID is the key)."""

from __future__ import annotations

import sys
from pathlib import Path

from bgtransfer._store._postgres import PostgresStore
from bgtransfer.testing import FaultServer
from tests.fleet.fleet import Fleet, completed_events, eventually, rows_for

HOOK = (
    "import os, sys, time; "
    "open(sys.argv[1], 'a').write('start ' + os.environ['BGTRANSFER_TASK_ID'] + '\\n'); "
    "time.sleep(float(sys.argv[2])); "
    "open(sys.argv[1], 'a').write('end ' + os.environ['BGTRANSFER_TASK_ID'] + '\\n')"
)


def _hook(ledger: Path, sleep: float) -> list[str]:
    return [sys.executable, "-c", HOOK, str(ledger), str(sleep)]


def test_each_completion_runs_its_hook_once(
    fleet: Fleet, pg: PostgresStore, server: FaultServer, tmp_path: Path, key: str
) -> None:
    ledger = tmp_path / "ledger"
    urls = [server.add(f"hook-{key}-{i}", b"h" * (100 + i)) for i in range(6)]
    out = tmp_path / "out"
    out.mkdir()
    rows = rows_for(urls, out, on_complete=_hook(ledger, 0))
    pg.insert_many(rows)
    fleet.start("w1")
    fleet.start("w2")
    fleet.wait_done(pg, [r.id for r in rows], 30)

    def recorded() -> bool:
        got = [pg.get(r.id) for r in rows]
        return all(g is not None and g.hook_state == "done" for g in got)

    eventually(recorded, 20, "every hook recorded")
    lines = ledger.read_text().splitlines()
    assert sorted(lines) == sorted([f"start {r.id}" for r in rows] + [f"end {r.id}" for r in rows])
    assert completed_events(fleet.url) == {r.id: 1 for r in rows}
    assert fleet.stop("w1") == 0
    assert fleet.stop("w2") == 0


def test_a_hook_whose_worker_died_runs_again_elsewhere(
    fleet: Fleet, pg: PostgresStore, server: FaultServer, tmp_path: Path, key: str
) -> None:
    ledger = tmp_path / "ledger"
    (row,) = rows_for(
        [server.add(f"hook2-{key}", b"x" * 500)], tmp_path, on_complete=_hook(ledger, 3)
    )
    pg.insert(row)
    fleet.start("w1")
    eventually(lambda: ledger.exists() and "start" in ledger.read_text(), 20, "the hook starts")
    fleet.kill("w1")  # while its hook sleeps
    fleet.start("w2")

    def recorded() -> bool:
        got = pg.get(row.id)
        return got is not None and got.hook_state == "done"

    eventually(recorded, 30, "the hook ran again and was recorded")
    assert ledger.read_text().splitlines()[-1] == f"end {row.id}"
    assert ledger.read_text().count(f"start {row.id}") == 2  # at least once: twice here
    assert completed_events(fleet.url) == {row.id: 1}  # one completion all the same
    assert fleet.stop("w2") == 0
