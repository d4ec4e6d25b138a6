"""Fleet-wide limits: a per-origin limit of N means N live leases across every worker;
claims keep priority order and honour start times."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from bgtransfer._store._postgres import PostgresStore
from bgtransfer._tasks import build_row
from bgtransfer.testing import FaultServer
from tests.fleet.fleet import Fleet, rows_for

T0 = 1_000_000.0


def test_the_store_knows_each_tasks_origin(pg: PostgresStore, pg_url: str, tmp_path: Path) -> None:
    urls = ["http://User:pw@Example.COM/a?x=1", "https://h.test/b", "http://[::1]:8080/c",
            "http://h.test:80/d"]  # fmt: skip
    rows = [build_row("s", u, tmp_path / f"f{i}", background=True) for i, u in enumerate(urls)]
    pg.insert_many(rows)
    with psycopg.connect(pg_url, autocommit=True) as con:
        got: dict[str, str] = dict(con.execute("SELECT id, origin FROM tasks").fetchall())
    assert [got[r.id] for r in rows] == [
        "http://example.com:80", "https://h.test:443", "http://[::1]:8080", "http://h.test:80",
    ]  # fmt: skip


def test_claims_keep_an_origin_under_its_limit_across_workers(
    pg: PostgresStore, tmp_path: Path
) -> None:
    a = [build_row("s", f"http://a.test/{i}", tmp_path / f"a{i}", background=True)
         for i in range(5)]  # fmt: skip
    b = [build_row("s", f"http://b.test/{i}", tmp_path / f"b{i}", background=True)
         for i in range(2)]  # fmt: skip
    pg.insert_many(a + b)
    first = pg.claim("w1", 30.0, limit=10, now=T0, max_per_origin=2)
    assert sorted(c.row.id for c in first) == sorted([a[0].id, a[1].id, b[0].id, b[1].id])
    assert pg.claim("w2", 30.0, limit=10, now=T0 + 1, max_per_origin=2) == []  # all full
    done = next(c for c in first if c.row.id == a[0].id)
    assert pg.release(done.row.id, done.token)  # a place of a.test is free again...
    again = pg.claim("w2", 30.0, limit=10, now=T0 + 2, max_per_origin=2)
    assert [c.row.id for c in again] == [a[0].id]  # ...taken by the queue's head of a.test
    # Leases that ran out free their places.
    later = pg.claim("w3", 30.0, limit=10, now=T0 + 40, max_per_origin=2)
    assert len(later) == 4  # two of a.test and both of b.test, taken over


def test_two_workers_share_one_origins_limit(
    fleet: Fleet, pg: PostgresStore, server: FaultServer, tmp_path: Path, key: str
) -> None:
    data = [os.urandom(120_000) for _ in range(8)]
    urls = [server.add(f"lim-{key}-{i}", d) + "?rate=200000" for i, d in enumerate(data)]
    out = tmp_path / "out"
    out.mkdir()
    rows = rows_for(urls, out)
    pg.insert_many(rows)
    server.peak_concurrency(reset=True)
    fleet.start("w1", max_active=4, max_per_host=2)
    fleet.start("w2", max_active=4, max_per_host=2)
    fleet.wait_done(pg, [r.id for r in rows], 45)
    assert server.peak_concurrency() == 2  # 2 across both workers (each alone allows 2)
    for r, d in zip(rows, data, strict=True):
        assert Path(r.path).read_bytes() == d
    holders = {w.name for w in pg.workers()}
    assert holders == {"w1", "w2"}
    assert fleet.stop("w1") == 0
    assert fleet.stop("w2") == 0
