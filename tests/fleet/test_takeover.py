"""A worker dies or freezes mid-transfer: another one takes its tasks over, resumes them from
their committed offset, and a frozen one (a zombie) can change nothing any more."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psycopg

from bgtransfer._store._postgres import PostgresStore
from bgtransfer.testing import FaultServer
from tests.fleet.fleet import Fleet, completed_events, eventually, rows_for


def _progress(url: str, worker: str) -> dict[str, int]:
    """Committed offsets of the tasks ``worker`` holds, those past 0."""
    with psycopg.connect(url, autocommit=True) as con:
        cur = con.execute(
            'SELECT id, "offset" FROM tasks WHERE lease_owner=%s AND "offset" > 0', (worker,)
        )
        return {str(i): int(o) for i, o in cur.fetchall()}


def _range_starts(server: FaultServer, name: str) -> list[int | None]:
    starts: list[int | None] = []
    for r in server.requests(f"/r/{name}"):
        rng = r.headers.get("range")
        starts.append(None if rng is None else int(rng.split("=")[1].split("-")[0]))
    return starts


def test_a_killed_workers_tasks_are_resumed_by_the_others(
    fleet: Fleet, pg: PostgresStore, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 600_000
    data = [os.urandom(size) for _ in range(6)]
    names = [f"kill-{key}-{i}" for i in range(6)]
    urls = [server.add(n, d) + "?rate=200000" for n, d in zip(names, data, strict=True)]
    out = tmp_path / "out"
    out.mkdir()
    rows = rows_for(urls, out)
    pg.insert_many(rows)
    for name in ("w1", "w2", "w3"):
        fleet.start(name, max_active=2)
    holder: dict[str, dict[str, int]] = {}

    def w1_progressed() -> bool:
        holder["w1"] = _progress(fleet.url, "w1")
        return bool(holder["w1"])

    eventually(w1_progressed, 20, "w1 commits progress")
    fleet.kill("w1")
    victims = holder["w1"]
    fleet.wait_done(pg, [r.id for r in rows], 45)
    for r, d in zip(rows, data, strict=True):
        assert Path(r.path).read_bytes() == d
    assert completed_events(fleet.url) == {r.id: 1 for r in rows}  # none lost or doubled
    by_id = {r.id: n for r, n in zip(rows, names, strict=True)}
    for task_id, offset in victims.items():
        starts = _range_starts(server, by_id[task_id])
        # Its first request from 0, then resumed past the committed offset (not restarted).
        assert starts[0] is None
        assert len(starts) >= 2
        assert all(s is not None and s >= offset for s in starts[1:]), starts
        row = pg.get(task_id)
        assert row is not None
        assert row.snap.restarts == 0
    assert sorted(os.listdir(out)) == sorted(os.path.basename(r.path) for r in rows)
    for name in ("w2", "w3"):
        assert fleet.stop(name) == 0


def test_a_frozen_worker_is_fenced_off_and_mixes_in_no_bytes(
    fleet: Fleet, pg: PostgresStore, server: FaultServer, tmp_path: Path, key: str
) -> None:
    old, new = os.urandom(900_000), os.urandom(900_000)
    name = f"stop-{key}"
    url = server.add(name, old) + "?rate=150000"
    out = tmp_path / "out"
    out.mkdir()
    (row,) = rows_for([url], out)
    pg.insert(row)
    fleet.start("w1")
    eventually(lambda: bool(_progress(fleet.url, "w1")), 20, "w1 commits progress")
    fleet.start("w2")
    fleet.signal("w1", signal.SIGSTOP)
    # While it is frozen, the resource changes: whoever resumes must start over on the new
    # version, and nothing the zombie still has in flight may end up in the file.
    server.replace(name, new)

    def taken_over() -> bool:
        lease = pg.lease(row.id)
        return lease is not None and lease[0] == "w2"

    eventually(taken_over, 20, "w2 takes the task over")
    fleet.signal("w1", signal.SIGCONT)
    # It stops by its own clock (no renewal for too long) or at its first refused commit.
    stopped = ("stopping its 1 task", "another worker holds it now", "its lease was taken over")
    eventually(
        lambda: any(s in fleet.log("w1") for s in stopped), 15, "the zombie notices and stops"
    )
    fleet.wait_done(pg, [row.id], 45)
    assert Path(row.path).read_bytes() == new
    assert completed_events(fleet.url) == {row.id: 1}
    assert os.listdir(out) == [os.path.basename(row.path)]  # no zombie partial left behind
    assert fleet.procs["w1"].poll() is None  # alive, and it comes back as a clean worker
    assert fleet.stop("w1") == 0
    assert fleet.stop("w2") == 0
