"""Store v9: queue order by priority, start times, jobs and runs, limits, migration from v8."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from bgtransfer._store._jobs import JobRow
from bgtransfer._store._sqlite import SCHEMA_VERSION, SQLiteStore
from bgtransfer._tasks import build_row


def test_queue_is_read_in_priority_order_and_skips_future_start_times(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    try:
        now = time.time()
        rows = [
            build_row("s", "http://h/1", tmp_path / "low", background=True, priority="low"),
            build_row("s", "http://h/2", tmp_path / "n1", background=True),
            build_row("s", "http://h/3", tmp_path / "high", background=True, priority="high"),
            build_row("s", "http://h/4", tmp_path / "later", background=True, start_at=now + 60),
            build_row("s", "http://h/5", tmp_path / "n2", background=True),
        ]
        store.insert_many(rows)
        got = [r.path for r in store.next_queued(background=True, owner=None, limit=10)]
        assert got == [str(tmp_path / n) for n in ("high", "n1", "n2", "low")]
        assert store.next_start(background=True, now=now) == now + 60
        assert store.next_start(background=False, now=now) is None
        assert rows[3].snap.detail.startswith("scheduled for ")
    finally:
        store.close()


def test_a_run_starts_atomically_and_its_end_keeps_the_validators(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    try:
        now = time.time()
        job = JobRow("j1", "s", "http://h/f", str(tmp_path / "f"), 60.0, now, now, {}, None,
                     None, None, now)  # fmt: skip
        store.add_job(job)
        assert [j.id for j in store.due_jobs(now)] == ["j1"]
        row = build_row("s", "http://h/f", tmp_path / "f", background=True, job_id="j1")
        job.next_run = now + 60
        assert store.start_run(job, row, scheduled_for=now, now=now) == 1
        assert store.due_jobs(now) == []
        assert store.get(row.id) is not None
        assert store.unfinished_runs() == [row.id]
        store.finish_run(
            row.id, outcome="updated", status=200, finished_at=now + 1,
            validators=('"v1"', "Wed, 01 Jan 2020 00:00:00 GMT"),
        )  # fmt: skip
        (run,) = store.job_runs("j1")
        assert (run["outcome"], run["status"], run["task_id"]) == ("updated", 200, row.id)
        j = store.get_job("j1")
        assert j is not None
        assert (j.etag, j.last_task, j.next_run) == ('"v1"', row.id, now + 60)
        assert store.unfinished_runs() == []
        store.delete_job("j1")
        assert store.get_job("j1") is None
        assert store.job_runs("j1") == []
        assert store.get(row.id) is not None  # the run's task stays, like any task
    finally:
        store.close()


def test_limits_round_trip(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    try:
        assert store.limits() == (None, {})
        store.set_limit(None, 1000)
        store.set_limit("http://h:80", 500)
        store.set_limit("http://h:80", 600)
        assert store.limits() == (1000, {"http://h:80": 600})
        store.set_limit(None, None)
        assert store.limits() == (None, {"http://h:80": 600})
    finally:
        store.close()


def test_a_version_8_store_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v8.db"
    store = SQLiteStore(str(path))
    row = build_row("s", "http://h/f", tmp_path / "f", background=True)
    store.insert(row)
    store.close()
    con = sqlite3.connect(path)
    for stmt in (
        "DROP INDEX tasks_queue",
        "DROP INDEX tasks_not_before",
        "ALTER TABLE tasks DROP COLUMN priority",
        "ALTER TABLE tasks DROP COLUMN not_before",
        "DROP TABLE jobs",
        "DROP TABLE job_runs",
        "DROP TABLE limits",
        "DROP TABLE cooldowns",
        "PRAGMA user_version=8",
    ):
        con.execute(stmt)
    con.commit()
    con.close()
    store = SQLiteStore(str(path))
    try:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 10
        cols = {r[1] for r in store._db.execute("PRAGMA table_info(tasks)")}
        assert {"priority", "not_before"} <= cols
        # The old task is normal priority and due now.
        assert [r.id for r in store.next_queued(background=True, owner=None, limit=5)] == [row.id]
        assert store.list_jobs() == []
        assert store.limits() == (None, {})
        assert store.integrity_ok()
    finally:
        store.close()
