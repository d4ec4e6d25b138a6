"""Fleet mode on PostgreSQL: claims, leases and fencing tokens, against a real server.

Times are given explicitly (``now=``) where the lease clock matters, so no test waits for a
lease to run out.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bgtransfer._exceptions import StoreError
from bgtransfer._models import Phase
from bgtransfer._store._base import Attempt, LeaseLost
from bgtransfer._store._codec import event_record
from bgtransfer._store._pgschema import SCHEMA_VERSION
from bgtransfer._store._postgres import PostgresStore
from bgtransfer._store._sqlite import SQLiteStore
from bgtransfer._tasks import build_row
from tests.store.pg import PostgresServer

T0 = 1_000_000.0  # a lease clock far from now: nothing here depends on the real time


@pytest.fixture
def pg(pg_url: str) -> Iterator[PostgresStore]:
    store = PostgresStore(pg_url)
    try:
        yield store
    finally:
        store.close()


def _rows(tmp: Path, n: int, **kw: object) -> list:  # type: ignore[type-arg]
    kw.setdefault("background", True)
    return [build_row("s", f"http://h/{i}", tmp / f"f{i}", **kw) for i in range(n)]  # type: ignore[arg-type]


def test_claims_take_due_background_tasks_in_queue_order(pg: PostgresStore, tmp_path: Path) -> None:
    low, normal, high = (
        build_row("s", "http://h/l", tmp_path / "l", background=True, priority="low"),
        build_row("s", "http://h/n", tmp_path / "n", background=True),
        build_row("s", "http://h/h", tmp_path / "h", background=True, priority="high"),
    )
    later = build_row("s", "http://h/x", tmp_path / "x", background=True, start_at=T0 + 60)
    fg = build_row("s", "http://h/fg", tmp_path / "fg", background=False)
    paused = build_row("s", "http://h/p", tmp_path / "p", background=True)
    pg.insert_many([low, normal, high, later, fg, paused])
    pg.save(paused.id, dataclasses.replace(paused.snap, phase=Phase.SUSPENDED), wall_time=T0)
    got = pg.claim("w1", 30.0, limit=10, now=T0)
    assert [c.row.id for c in got] == [high.id, normal.id, low.id]
    assert all(c.token == 1 for c in got)
    assert pg.lease(high.id) == ("w1", T0 + 30.0, 1)
    assert pg.claim("w2", 30.0, limit=10, now=T0 + 1) == []  # all held
    # Its start time come, the scheduled one is claimable too (queue order: priority,
    # then age); w1's leases ran out at T0 + 30.
    got = pg.claim("w2", 30.0, limit=10, now=T0 + 61)
    assert [c.row.id for c in got] == [high.id, normal.id, later.id, low.id]
    assert [c.token for c in got] == [2, 2, 1, 2]


def test_two_workers_never_claim_one_task(pg_url: str, tmp_path: Path) -> None:
    setup = PostgresStore(pg_url)
    rows = _rows(tmp_path, 60)
    setup.insert_many(rows)
    setup.close()
    claimed: dict[str, list[str]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        store = PostgresStore(pg_url)
        try:
            for _ in range(100):  # bounded: 60 tasks, at least one each round until empty
                got = store.claim(name, 300.0, limit=3, now=T0)
                if not got:
                    return
                claimed[name] += [c.row.id for c in got]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    every = claimed["a"] + claimed["b"]
    assert sorted(every) == sorted(r.id for r in rows)  # each once: none lost, none doubled


def test_a_locked_task_is_skipped_not_waited_for(
    pg: PostgresStore, pg_url: str, tmp_path: Path
) -> None:
    first, second = _rows(tmp_path, 2)
    pg.insert_many([first, second])
    with psycopg.connect(pg_url) as other:  # a transaction holds the first task's row
        other.execute("SELECT id FROM tasks WHERE id=%s FOR UPDATE", (first.id,))
        pg._db.execute("SET lock_timeout = '5s'")  # a wait would fail the claim, not hang
        got = pg.claim("w1", 30.0, limit=2, now=T0)
        assert [c.row.id for c in got] == [second.id]
        other.rollback()
    assert [c.row.id for c in pg.claim("w1", 30.0, limit=2, now=T0)] == [first.id]


def test_a_holder_frozen_inside_a_transaction_loses_its_row_locks(
    pg: PostgresStore, pg_url: str, tmp_path: Path
) -> None:
    # A worker SIGSTOPped mid-transaction keeps its socket open: without the server's
    # idle-in-transaction timeout, its row lock would hide the task from every claim.
    first, second = _rows(tmp_path, 2)
    pg.insert_many([first, second])
    frozen = PostgresStore(pg_url, idle_tx_timeout=0.5)
    try:
        tx = frozen.transaction()
        tx.__enter__()
        frozen._db.execute("SELECT id FROM tasks WHERE id=? FOR UPDATE", (first.id,))
        assert [c.row.id for c in pg.claim("w1", 30.0, limit=2, now=T0)] == [second.id]
        got: list[str] = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:  # the server ends it after 0.5 s
            time.sleep(0.2)
            got = [c.row.id for c in pg.claim("w1", 30.0, limit=2, now=T0)]
        assert got == [first.id]
        with pytest.raises(StoreError):  # the frozen one learns it when it wakes
            tx.__exit__(None, None, None)
    finally:
        frozen.close()


def test_a_lost_lease_fences_off_the_old_holder(pg: PostgresStore, tmp_path: Path) -> None:
    (row,) = _rows(tmp_path, 1)
    pg.insert(row)
    (old,) = pg.claim("zombie", 10.0, now=T0)
    snap = dataclasses.replace(row.snap, phase=Phase.TRANSFERRING, detail="downloading")
    snap.offset = 100
    pg.save(row.id, snap, wall_time=T0 + 1, event=("s", "running"), fence=old.token)
    # The holder is paused past its lease; another worker takes the task over.
    assert pg.claim("w2", 10.0, now=T0 + 5) == []  # not before the lease ran out
    (new,) = pg.claim("w2", 10.0, now=T0 + 11)
    assert new.row.snap.offset == 100  # resumes from the committed prefix
    assert new.token > old.token
    # Back, the zombie can change nothing: not the offset, not the history, not the log.
    events_before = pg.last_cursor()
    zombie = dataclasses.replace(snap, offset=999)
    with pytest.raises(LeaseLost):
        pg.save(
            row.id, zombie, wall_time=T0 + 12, event=("s", "completed"),
            attempts=[Attempt(T0 + 2, "http://h/0", 100, key="z")], fence=old.token,
        )  # fmt: skip
    with pytest.raises(LeaseLost):
        pg.save_in_tx(row.id, None, wall_time=T0 + 12, attempts=[Attempt(T0, "u")], fence=old.token)
    # (save_in_tx outside a transaction ran in autocommit: the refusal left nothing either)
    assert pg.renew("zombie", {row.id: old.token}, 10.0, now=T0 + 12) == set()
    assert pg.release(row.id, old.token) is False
    got = pg.get(row.id)
    assert got is not None
    assert got.snap.offset == 100
    assert pg.attempts(row.id) == []
    assert pg.last_cursor() == events_before
    assert pg.lease(row.id) == ("w2", T0 + 21, new.token)
    # The new holder commits.
    pg.save(row.id, dataclasses.replace(snap, offset=200), wall_time=T0 + 13, fence=new.token)
    got = pg.get(row.id)
    assert got is not None
    assert got.snap.offset == 200


def test_renewal_keeps_and_release_gives_back(pg: PostgresStore, tmp_path: Path) -> None:
    a, b = _rows(tmp_path, 2)
    pg.insert_many([a, b])
    ca, cb = pg.claim("w1", 10.0, limit=2, now=T0)
    assert pg.renew("w1", {a.id: ca.token, b.id: cb.token}, 10.0, now=T0 + 8) == {a.id, b.id}
    assert pg.renew("w2", {a.id: ca.token}, 10.0, now=T0 + 8) == set()  # not its lease
    assert pg.claim("w2", 10.0, limit=2, now=T0 + 12) == []  # renewed until T0 + 18
    assert pg.release(a.id, ca.token) is True
    assert pg.lease(a.id) == (None, None, ca.token)
    (again,) = pg.claim("w2", 10.0, limit=2, now=T0 + 12)
    assert again.row.id == a.id
    assert again.token == ca.token + 1


def test_a_refused_commit_rolls_back_the_whole_group(pg: PostgresStore, tmp_path: Path) -> None:
    a, b = _rows(tmp_path, 2)
    pg.insert_many([a, b])
    ca, cb = pg.claim("w1", 10.0, limit=2, now=T0)
    pg.claim("w1", 10.0, limit=2, now=T0 + 20)  # both claimed again: the tokens are stale
    moved = dataclasses.replace(a.snap, offset=5)

    def group() -> None:
        with pg.transaction():
            pg.save_in_tx(a.id, moved, wall_time=T0, fence=ca.token + 1)  # current: passes
            pg.save_in_tx(b.id, moved, wall_time=T0, fence=cb.token)  # stale: refused

    with pytest.raises(LeaseLost):
        group()
    got = pg.get(a.id)
    assert got is not None
    assert got.snap.offset == 0


def test_sqlite_has_no_claims_to_fence(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    try:
        (row,) = _rows(tmp_path, 1)
        store.insert(row)
        with pytest.raises(StoreError, match="fleet mode needs PostgreSQL"):
            store.save(row.id, row.snap, wall_time=1.0, fence=1)
    finally:
        store.close()


def test_workers_starting_together_migrate_once(pg_url: str) -> None:
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(PostgresStore(pg_url))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == []
        assert len(stores) == 4
        with psycopg.connect(pg_url) as con:
            assert con.execute("SELECT version FROM bgtransfer_schema").fetchall() == [
                (SCHEMA_VERSION,)
            ]
    finally:
        for s in stores:
            s.close()


def test_a_newer_schema_is_refused(pg_url: str) -> None:
    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute("UPDATE bgtransfer_schema SET version=99")
    with pytest.raises(StoreError, match="newer than this"):
        PostgresStore(pg_url)


def test_an_unreachable_server_is_a_store_error(postgres: PostgresServer) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    with pytest.raises(StoreError, match="cannot connect to the task store"):
        PostgresStore(f"postgresql://postgres:hunter2@127.0.0.1:{port}/x", connect_timeout=5)


def test_committed_events_wake_a_listener_elsewhere(
    pg: PostgresStore, pg_url: str, tmp_path: Path
) -> None:
    from bgtransfer._store._postgres import EventListener

    a, b = _rows(tmp_path, 2)
    pg.insert_many([a, b])
    listener = EventListener(pg_url)
    try:
        assert listener.wait(0.05) == set()  # nothing happened: nothing to wake for
        running = dataclasses.replace(a.snap, phase=Phase.TRANSFERRING)
        pg.save(a.id, running, wall_time=T0)  # progress: no event, no wake-up
        assert listener.wait(0.05) == set()
        with pg.transaction():  # a group commit of two events: one wake-up
            for r in (a, b):
                pg.save_in_tx(
                    r.id, running, wall_time=T0,
                    events=[event_record("s", "running", running, T0)],
                )  # fmt: skip
            assert listener.wait(0.05) == set()  # not before the commit
        assert listener.wait(10.0) == {"s"}
        assert listener.wait(0.05) == set()
        cursor = pg.last_cursor()
        assert [e.task_id for e in pg.events_since("s", cursor - 2)] == [a.id, b.id]
    finally:
        listener.close()


def test_workers_and_queue_depth_for_status(pg: PostgresStore, tmp_path: Path) -> None:
    rows = _rows(tmp_path, 3)
    pg.insert_many(rows)
    assert pg.workers(now=T0) == []
    assert pg.queue_depth(now=T0) == 3
    pg.heartbeat("w1", "host-a", 100, now=T0)
    pg.heartbeat("w2", "host-b", 200, now=T0)
    pg.claim("w1", 10.0, limit=2, now=T0)
    assert pg.queue_depth(now=T0) == 1
    pg.heartbeat("w1", "host-a", 100, now=T0 + 5)
    w1, w2 = pg.workers(now=T0 + 5)
    assert (w1.name, w1.host, w1.pid, w1.started_at, w1.last_seen, w1.held) == (
        "w1", "host-a", 100, T0, T0 + 5, 2,
    )  # fmt: skip
    assert (w2.name, w2.held, w2.last_seen) == ("w2", 0, T0)
    # The leases ran out: nothing held, the tasks count as waiting again.
    assert [w.held for w in pg.workers(now=T0 + 11)] == [0, 0]
    assert pg.queue_depth(now=T0 + 11) == 3
    pg.heartbeat("w1", "host-a", 101, now=T0 + 20)  # restarted: a new start time
    assert pg.workers(now=T0 + 20)[0].started_at == T0 + 20
    pg.forget_worker("w2")
    assert [w.name for w in pg.workers(now=T0 + 20)] == ["w1"]


def test_claims_walk_indexes_not_the_queue(pg: PostgresStore, tmp_path: Path) -> None:
    from bgtransfer._store._postgres import _TAKEOVER, CLAIM_EXPIRED, CLAIM_QUEUED

    pg.insert_many(_rows(tmp_path, 50))
    pg._db.execute("ANALYZE tasks")
    pg._db.execute("SET enable_seqscan = off")  # a scan shows only if no index can serve
    for sql, args in (
        (CLAIM_QUEUED, (T0, 1)),
        (CLAIM_EXPIRED, (T0, *_TAKEOVER, 1)),
    ):
        plan = " ".join(r[0] for r in pg._db.execute("EXPLAIN " + sql, args).fetchall())
        assert "Seq Scan" not in plan, plan
    queued = " ".join(r[0] for r in pg._db.execute("EXPLAIN " + CLAIM_QUEUED, (T0, 1)).fetchall())
    assert "tasks_queue" in queued  # in queue order: it stops at the first free task
    assert "Sort" not in queued


def _kill_connection(store: PostgresStore, pg_url: str) -> None:
    pid = store._db.con.info.backend_pid
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_lost_connection_fails_one_call_then_reconnects(
    pg: PostgresStore, pg_url: str, tmp_path: Path
) -> None:
    (row,) = _rows(tmp_path, 1)
    pg.insert(row)
    _kill_connection(pg, pg_url)
    with pytest.raises(StoreError, match="the task store failed"):
        pg.get(row.id)
    got = pg.get(row.id)  # a new connection
    assert got is not None

    # Cut off inside a transaction: it fails whole, nothing of it lands; then it works.
    def cut_midway() -> None:
        with pg.transaction():
            pg.set_limit(None, 1)
            _kill_connection(pg, pg_url)
            pg.set_limit("http://h:80", 2)

    with pytest.raises(StoreError):
        cut_midway()
    assert pg.limits() == (None, {})
    pg.set_limit(None, 3)
    assert pg.limits() == (3, {})


def test_a_closed_store_refuses_calls(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get("x")
