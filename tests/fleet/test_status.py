"""`bgtransfer --store URL status`: a worker that stopped heartbeating is shown "stale" (with
how long ago it was heard of), a worker that stopped cleanly leaves the list, and one gone
for a day is pruned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bgtransfer._store._pgfleet import GONE_AFTER
from bgtransfer._store._postgres import PostgresStore
from bgtransfer.cli import main
from tests.fleet.fleet import Fleet, eventually
from tests.fleet.pace import one, running

T0 = 1_000_000.0


def test_a_worker_past_its_lease_is_stale_and_one_gone_for_a_day_is_pruned(
    pg: PostgresStore,
) -> None:
    pg.heartbeat("w1", "host-a", 100, lease_s=2.0, now=T0)
    pg.heartbeat("old", "host-b", 200, now=T0)  # a worker of schema 4: no lease said
    assert [(w.name, w.state(T0 + 1)) for w in pg.workers(now=T0 + 1)] == [
        ("old", "alive"), ("w1", "alive"),
    ]  # fmt: skip
    assert [(w.name, w.state(T0 + 3)) for w in pg.workers(now=T0 + 3)] == [
        ("old", "alive"), ("w1", "stale"),
    ]  # fmt: skip
    assert [w.state(T0 + 31) for w in pg.workers(now=T0 + 31)] == ["stale", "stale"]
    later = T0 + GONE_AFTER + 1
    assert pg.workers(now=later) == []  # not listed once gone for a day...
    pg.heartbeat("w2", "host-c", 300, lease_s=2.0, now=later)
    (n,) = one(pg, "SELECT COUNT(*) FROM workers")
    assert n == 1  # ...and pruned by the next heartbeat of any worker
    assert [w.name for w in pg.workers(now=later)] == ["w2"]


def _status(pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    assert main(["--home", str(tmp_path / "h"), "--store", pg_url, "status", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_status_shows_a_killed_worker_stale_and_forgets_a_stopped_one(
    fleet: Fleet, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.start("w1")
    fleet.start("w2")
    running(fleet, "w1", "w2")
    states = {w["name"]: w["state"] for w in _status(pg_url, tmp_path, capsys)["workers"]}
    assert states == {"w1": "alive", "w2": "alive"}
    fleet.kill("w1")

    def stale() -> bool:
        info = _status(pg_url, tmp_path, capsys)
        return {w["name"]: w["state"] for w in info["workers"]} == {"w1": "stale", "w2": "alive"}

    eventually(stale, 10, "w1 shown stale", interval=0.3)  # the lease is 2 s
    assert main(["--home", str(tmp_path / "h"), "--store", pg_url, "status"]) == 0
    text = capsys.readouterr().out
    row = next(line.split() for line in text.splitlines() if line.startswith("w1 "))
    assert row[3] == "stale"
    assert float(row[4]) >= fleet.lease  # "N s ago": when it was last heard of
    assert fleet.stop("w2") == 0
    names = [w["name"] for w in _status(pg_url, tmp_path, capsys)["workers"]]
    assert names == ["w1"]  # a clean stop leaves the list
