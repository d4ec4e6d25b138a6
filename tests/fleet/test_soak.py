"""A soak: many small tasks over three workers while workers are SIGKILLed at random and
restarted (under the same name, as systemd would); at the end every file is byte-exact,
every task completed exactly once, and nothing is left behind on disk or in the leases.

The default run is small (300 tasks); ``-m slow`` runs the issue's 20 000."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import psycopg
import pytest

from bgtransfer._store._postgres import PostgresStore
from bgtransfer.testing import FaultServer, gen_sha256
from tests.fleet.fleet import Fleet, completed_events, rows_for


def _soak(
    fleet: Fleet, pg: PostgresStore, server: FaultServer, tmp_path: Path, key: str,
    *, tasks: int, kills: int, timeout: float,
) -> None:  # fmt: skip
    rng = random.Random(key)
    sizes = [rng.randrange(1, 20_000) for _ in range(tasks)]
    urls = [server.url(f"/gen/{n}") + f"?k={key}-{i}" for i, n in enumerate(sizes)]
    out = tmp_path / "out"
    out.mkdir()
    rows = rows_for(urls, out)
    for start in range(0, len(rows), 1000):
        pg.insert_many(rows[start : start + 1000])
    names = ["w1", "w2", "w3"]
    for name in names:
        fleet.start(name, max_active=16)
    deadline = time.monotonic() + timeout
    for _ in range(kills):
        time.sleep(rng.uniform(0.3, 1.5))
        victim = rng.choice(names)
        fleet.kill(victim)
        fleet.start(victim, max_active=16)
    fleet.wait_done(pg, [r.id for r in rows], max(5.0, deadline - time.monotonic()))
    expected = {r.id: gen_sha256(n) for r, n in zip(rows, sizes, strict=True)}
    for r in rows:
        got = pg.get(r.id)
        assert got is not None
        assert got.snap.error is None, got.snap.error
        assert hashlib.sha256(Path(r.path).read_bytes()).hexdigest() == expected[r.id]
    assert completed_events(fleet.url) == {r.id: 1 for r in rows}
    assert sorted(os.listdir(out)) == sorted(os.path.basename(r.path) for r in rows)
    # Every completed task was given back, except by a worker killed between its task's
    # completion and the release: those leases run out (and nobody claims a done task).
    time.sleep(fleet.lease + 0.5)
    with psycopg.connect(fleet.url, autocommit=True) as con:
        row = con.execute(
            "SELECT COUNT(*) FROM tasks WHERE lease_owner IS NOT NULL AND lease_expires >= %s",
            (time.time(),),
        ).fetchone()
    assert row == (0,)
    for name in names:
        assert fleet.stop(name) == 0


def test_soak_300_tasks_3_workers_random_kills(
    fleet: Fleet, pg: PostgresStore, server: FaultServer, tmp_path: Path, key: str
) -> None:
    _soak(fleet, pg, server, tmp_path, key, tasks=300, kills=3, timeout=40)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_soak_20000_tasks_3_workers_random_kills(
    fleet: Fleet, pg: PostgresStore, server: FaultServer, tmp_path: Path, key: str
) -> None:
    _soak(fleet, pg, server, tmp_path, key, tasks=20_000, kills=20, timeout=1500)
