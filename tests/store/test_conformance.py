"""What every store backend must do: the :class:`Store` protocol, as tests.

Each test runs once per backend (the ``store`` and ``backend`` fixtures of conftest.py):
SQLite on a temporary file, PostgreSQL on a server the suite starts. Real databases only.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from bgtransfer._exceptions import DestinationError, ReadError, TaskNotFound
from bgtransfer._models import Phase
from bgtransfer._store._base import (
    OPEN_ATTEMPT,
    Attempt,
    DuplicateKey,
    JobRow,
    Store,
    TaskRow,
)
from bgtransfer._store._codec import event_record
from bgtransfer._store._sqlite import SQLiteStore
from bgtransfer._tasks import build_row
from tests.store.backends import Backend


def _row(tmp: Path, name: str, *, session: str = "s", **kw: object) -> TaskRow:
    kw.setdefault("background", True)
    return build_row(session, f"http://h/{name}", tmp / name, **kw)  # type: ignore[arg-type]


def _finish(store: Store, row: TaskRow, *, at: float, event: bool = True) -> int | None:
    snap = dataclasses.replace(row.snap, phase=Phase.DONE, detail="completed", offset=3)
    return store.save(
        row.id, snap, wall_time=at, event=(row.session, "completed") if event else None
    )


def test_sqlite_store_satisfies_the_protocol(tmp_path: Path) -> None:
    # Checked by mypy: SQLiteStore must be assignable to Store, member for member.
    store: Store = SQLiteStore(str(tmp_path / "p.db"))
    store.close()


def test_a_task_round_trips_with_every_field(store: Store, tmp_path: Path) -> None:
    row = _row(
        tmp_path, "f", idempotency_key="k1", metadata={"a": [1, "x"]},
        on_complete=("/bin/true", "--x"), headers={"X-A": "1"}, segments=2,
    )  # fmt: skip
    row.owner = "me"
    row.snap.response_body = b"\x00\xffbody"
    row.snap.segments = ((0, 5, 10), (10, 10, 20))
    row.snap.error = ReadError("cut", task_id=row.id)
    store.insert(row)
    got = store.get(row.id)
    assert got is not None
    assert got == row
    assert store.get("nope") is None


def test_a_second_live_download_to_one_path_is_refused(store: Store, tmp_path: Path) -> None:
    first = _row(tmp_path, "same")
    store.insert(first)
    with pytest.raises(DestinationError, match="already downloads to"):
        store.insert(_row(tmp_path, "same"))
    _finish(store, first, at=1.0)
    again = _row(tmp_path, "same")
    store.insert(again)  # the first one is done: the path is free
    assert store.get(again.id) is not None


def test_idempotency_keys_are_per_session(store: Store, tmp_path: Path) -> None:
    a = _row(tmp_path, "a", session="s1", idempotency_key="k")
    b = _row(tmp_path, "b", session="s2", idempotency_key="k")
    store.insert_many([a, b])
    found = store.find_key("s1", "k")
    assert found is not None
    assert found.id == a.id
    assert found.idempotency_key == "k"
    found = store.find_key("s2", "k")
    assert found is not None
    assert found.id == b.id
    assert store.find_key("s3", "k") is None
    with pytest.raises(DuplicateKey):
        store.insert(_row(tmp_path, "c", session="s1", idempotency_key="k"))
    assert [r.id for r in store.list("s1")] == [a.id]  # nothing of the refused one stays


def test_insert_many_is_all_or_nothing(store: Store, tmp_path: Path) -> None:
    store.insert(_row(tmp_path, "taken"))
    with pytest.raises(DestinationError):
        store.insert_many([_row(tmp_path, "free"), _row(tmp_path, "taken")])
    assert [r.path for r in store.list()] == [str(tmp_path / "taken")]


def test_list_page_and_prefix(store: Store, tmp_path: Path) -> None:
    rows = []
    for i in range(5):
        r = _row(tmp_path, f"f{i}", session="s" if i % 2 == 0 else "t")
        r.created_at = 100.0 + i
        rows.append(r)
    store.insert_many(rows)
    _finish(store, rows[2], at=200.0)
    assert [r.id for r in store.list()] == [r.id for r in rows]
    assert [r.id for r in store.list("s")] == [rows[0].id, rows[2].id, rows[4].id]
    assert [r.id for r in store.list(limit=2, offset=1)] == [rows[1].id, rows[2].id]
    assert [r.id for r in store.page("s", phases=["done"])] == [rows[2].id]
    assert [r.id for r in store.page(None, since=103.0)] == [rows[3].id, rows[4].id]
    assert [r.id for r in store.page(None, after=rows[1].id, limit=2)] == [
        rows[2].id,
        rows[3].id,
    ]
    with pytest.raises(TaskNotFound):
        store.page(None, after="not-a-task")
    assert [r.id for r in store.find_prefix(rows[3].id[:10])] == [rows[3].id]
    assert store.counts() == {"queued": 4, "done": 1}


def test_save_with_events_and_acknowledgements(store: Store, tmp_path: Path) -> None:
    row = _row(tmp_path, "f")
    store.insert(row)
    start = store.last_cursor()
    snap = dataclasses.replace(row.snap, phase=Phase.TRANSFERRING, detail="downloading")
    snap.offset, snap.total = 1, 3
    c1 = store.save(row.id, snap, wall_time=10.0, event=("s", "running"))
    assert c1 is not None
    assert c1 > start
    assert store.save(row.id, snap, wall_time=11.0) is None  # progress: no event
    c2 = _finish(store, row, at=12.0)
    assert c2 is not None
    assert c2 > c1
    assert store.last_cursor() == c2
    got = store.get(row.id)
    assert got is not None
    assert (got.snap.phase, got.snap.offset, got.finished_at, got.updated_at) == (
        Phase.DONE, 3, 12.0, 12.0,
    )  # fmt: skip
    events = store.events_since("s", start)
    assert [(e.cursor, e.phase, e.bytes_received) for e in events] == [
        (c1, "transferring", 1), (c2, "done", 3),
    ]  # fmt: skip
    assert store.events_since("other", start) == []
    assert [e.cursor for e in store.events_since("s", start, limit=1)] == [c1]
    assert [e.task_id for e in store.unacknowledged_completions("s")] == [row.id]
    assert store.acknowledge(row.id) is True
    # An acknowledged completion never comes back, from whatever cursor.
    assert [e.cursor for e in store.events_since("s", start)] == [c1]
    assert store.unacknowledged_completions("s") == []
    # A second save of DONE keeps the first finishing time.
    _finish(store, row, at=99.0, event=False)
    again = store.get(row.id)
    assert again is not None
    assert again.finished_at == 12.0
    assert again.acknowledged


def test_an_unfinished_task_cannot_be_acknowledged(store: Store, tmp_path: Path) -> None:
    row = _row(tmp_path, "f")
    store.insert(row)
    assert store.acknowledge(row.id) is False
    assert store.acknowledge("nope") is False


def test_group_commit_in_one_transaction(store: Store, tmp_path: Path) -> None:
    a, b = _row(tmp_path, "a"), _row(tmp_path, "b")
    store.insert_many([a, b])
    snap = dataclasses.replace(a.snap, phase=Phase.TRANSFERRING, detail="downloading")
    with store.transaction():
        ca = store.save_in_tx(
            a.id, snap, wall_time=5.0, events=[event_record("s", "running", snap, 5.0)]
        )
        cb = store.save_in_tx(b.id, snap, wall_time=5.0, hook_state="pending")
    assert len(ca) == 1
    assert cb == []
    got_b = store.get(b.id)
    assert got_b is not None
    assert got_b.snap.phase is Phase.TRANSFERRING
    assert got_b.hook_state == "pending"
    assert [r.id for r in store.pending_hooks()] == [b.id]

    # A failure inside the transaction undoes all of it.
    def fail_midway() -> None:
        with store.transaction():
            store.save_in_tx(a.id, dataclasses.replace(snap, offset=7), wall_time=6.0)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_midway()
    got_a = store.get(a.id)
    assert got_a is not None
    assert got_a.snap.offset == 0


def test_attempts_open_update_and_close(store: Store, tmp_path: Path) -> None:
    row = _row(tmp_path, "f")
    store.insert(row)
    first = Attempt(100.0, "http://user:secret@h/f", 0, key="k1")
    with store.transaction():
        store.save_in_tx(row.id, None, wall_time=100.0, attempts=[first.copy()])
    (got,) = store.attempts(row.id)
    assert (got.n, got.outcome, got.ended_at) == (1, OPEN_ATTEMPT, None)
    assert "secret" not in got.url  # the history never keeps a password
    first.ended_at, first.status, first.bytes, first.outcome = 101.0, 206, 42, "body complete"
    second = Attempt(102.0, "http://h/f", 42, key="k2")
    store.save(row.id, row.snap, wall_time=102.5, attempts=[first, second])
    done, open_ = store.attempts(row.id)
    assert (done.n, done.status, done.bytes, done.outcome, done.ended_at) == (
        1, 206, 42, "body complete", 101.0,
    )  # fmt: skip
    assert (open_.n, open_.range_start, open_.ended_at) == (2, 42, None)
    # Recovery: requests a dead process left open end at the task's last commit.
    assert store.close_open_attempts("interrupted", task_id=row.id) == 1
    _, closed = store.attempts(row.id)
    assert (closed.outcome, closed.ended_at) == ("interrupted", 102.5)
    assert store.close_open_attempts("interrupted", background=True) == 0
    assert Attempt.from_json(closed.to_json()) == dataclasses.replace(closed, key=None)


def test_close_open_attempts_by_kind(store: Store, tmp_path: Path) -> None:
    bg, fg = _row(tmp_path, "bg"), _row(tmp_path, "fg", background=False)
    store.insert_many([bg, fg])
    for r in (bg, fg):
        store.save(r.id, r.snap, wall_time=50.0, attempts=[Attempt(60.0, "http://h/x")])
    assert store.close_open_attempts("stopped", background=False) == 1
    assert [a.outcome for a in store.attempts(fg.id)] == ["stopped"]
    (left,) = store.attempts(bg.id)
    assert left.outcome == OPEN_ATTEMPT
    # It started after the last commit: it ends when it started, never before.
    assert store.close_open_attempts("stopped", background=True) == 1
    assert store.attempts(bg.id)[0].ended_at == 60.0


def test_next_queued_order_owner_and_exclusions(store: Store, tmp_path: Path) -> None:
    now = time.time()
    rows = [
        _row(tmp_path, "low", priority="low"),
        _row(tmp_path, "n1"),
        _row(tmp_path, "high", priority="high"),
        _row(tmp_path, "later", start_at=now + 3600),
        _row(tmp_path, "n2"),
        _row(tmp_path, "fg", background=False),
    ]
    for i, r in enumerate(rows):
        r.created_at = now + i
    rows[4].owner = "o1"
    store.insert_many(rows)
    got = store.next_queued(background=True, owner=None, limit=10)
    assert [r.path for r in got] == [str(tmp_path / n) for n in ("high", "n1", "n2", "low")]
    got = store.next_queued(background=True, owner=None, limit=2, exclude={rows[2].id})
    assert [r.path for r in got] == [str(tmp_path / n) for n in ("n1", "n2")]
    assert [r.id for r in store.next_queued(background=True, owner="o1", limit=5)] == [rows[4].id]
    assert [r.id for r in store.next_queued(background=False, owner=None, limit=5)] == [rows[5].id]
    assert store.next_start(background=True, now=now) == now + 3600
    assert store.next_start(background=False, now=now) is None


def test_requeue_in_phase_owner_and_interrupt(store: Store, tmp_path: Path) -> None:
    rows = [_row(tmp_path, n) for n in ("run", "wait", "cancel", "fg")]
    rows[3].background = False
    store.insert_many(rows)
    for r, phase in zip(
        rows[:3], (Phase.TRANSFERRING, Phase.WAITING_RETRY, Phase.CANCELING), strict=True
    ):
        store.save(r.id, dataclasses.replace(r.snap, phase=phase), wall_time=1.0)
    assert [r.id for r in store.in_phase(Phase.CANCELING, background=True)] == [rows[2].id]
    assert store.requeue_running(background=True) == 2
    for r in rows[:2]:
        got = store.get(r.id)
        assert got is not None
        assert got.snap.phase is Phase.QUEUED
        assert got.snap.detail == "queued (recovered after a restart)"
    store.set_owner(rows[3].id, "tok")
    got = store.get(rows[3].id)
    assert got is not None
    assert got.owner == "tok"
    store.interrupt_queued("tok", "interrupted: closed")
    got = store.get(rows[3].id)
    assert got is not None
    assert (got.snap.phase, got.snap.detail, got.owner) == (
        Phase.SUSPENDED, "interrupted: closed", None,
    )  # fmt: skip


def test_remove_forgets_only_finished_tasks(store: Store, tmp_path: Path) -> None:
    done, live = _row(tmp_path, "done"), _row(tmp_path, "live")
    store.insert_many([done, live])
    store.save(done.id, done.snap, wall_time=1.0, attempts=[Attempt(1.0, "http://h/done")])
    _finish(store, done, at=5.0)
    assert store.finished_ids() == [done.id]
    assert store.finished_ids(before=4.0) == []
    assert store.finished_ids(session="other") == []
    assert store.remove([done.id, live.id, "nope"]) == [done.id]
    assert store.get(done.id) is None
    assert store.get(live.id) is not None
    assert store.attempts(done.id) == []
    assert [e.task_id for e in store.events_since("s", 0)] == []


def test_jobs_runs_and_validators(store: Store, tmp_path: Path) -> None:
    now = time.time()
    job = JobRow("j1", "s", "http://h/f", str(tmp_path / "f"), 60.0, now, now, {"x": 1},
                 None, None, None, now)  # fmt: skip
    store.add_job(job)
    assert store.get_job("j1") == job
    assert [j.id for j in store.find_job_prefix("j")] == ["j1"]
    assert [j.id for j in store.list_jobs("s")] == ["j1"]
    assert store.list_jobs("t") == []
    assert [j.id for j in store.due_jobs(now)] == ["j1"]
    assert store.next_job_time() == now
    row = _row(tmp_path, "f", job_id="j1")
    job.next_run = now + 60
    assert store.start_run(job, row, scheduled_for=now, now=now) == 1
    assert store.due_jobs(now) == []
    assert store.next_job_time() == now + 60
    assert store.unfinished_runs() == [row.id]
    store.finish_run(
        row.id, outcome="updated", status=200, finished_at=now + 1,
        validators=('"v1"', "Wed, 01 Jan 2020 00:00:00 GMT"),
    )  # fmt: skip
    (run,) = store.job_runs("j1")
    assert (run["n"], run["outcome"], run["status"], run["task_id"]) == (1, "updated", 200, row.id)
    got = store.get_job("j1")
    assert got is not None
    assert (got.etag, got.last_task) == ('"v1"', row.id)
    store.set_next_run("j1", now + 5)
    assert store.next_job_time() == now + 5
    store.delete_job("j1")
    assert store.get_job("j1") is None
    assert store.job_runs("j1") == []
    assert store.get(row.id) is not None  # the run's task stays, like any task


def test_a_run_that_cannot_start_leaves_nothing(store: Store, tmp_path: Path) -> None:
    now = time.time()
    store.insert(_row(tmp_path, "busy"))
    job = JobRow("j2", "s", "http://h/busy", str(tmp_path / "busy"), 60.0, now, now, {},
                 None, None, None, now)  # fmt: skip
    store.add_job(job)
    job.next_run = now + 60
    with pytest.raises(DestinationError):
        store.start_run(job, _row(tmp_path, "busy"), scheduled_for=now, now=now)
    assert store.job_runs("j2") == []
    got = store.get_job("j2")
    assert got is not None
    assert got.next_run == now


def test_limits_and_cooldowns(store: Store) -> None:
    assert store.limits() == (None, {})
    store.set_limit(None, 1000)
    store.set_limit("http://h:80", 500)
    store.set_limit("http://h:80", 600)
    assert store.limits() == (1000, {"http://h:80": 600})
    store.set_limit(None, None)
    assert store.limits() == (None, {"http://h:80": 600})
    store.save_cooldown("http://a:80", 200.0, "429", now=100.0)
    store.save_cooldown("http://a:80", 300.0, "503", now=100.0)
    store.save_cooldown("http://b:80", 150.0, "429", now=100.0)
    assert sorted(store.cooldowns(120.0)) == [("http://a:80", 300.0, "503"),
                                              ("http://b:80", 150.0, "429")]  # fmt: skip
    assert store.cooldowns(160.0) == [("http://a:80", 300.0, "503")]
    store.save_cooldown("http://c:80", 400.0, "429", now=310.0)  # drops the expired ones
    assert store.cooldowns(0.0) == [("http://c:80", 400.0, "429")]


def test_a_second_connection_sees_commits(backend: Backend, tmp_path: Path) -> None:
    a, b = backend.open(), backend.open()
    try:
        row = _row(tmp_path, "f")
        a.insert(row)
        got = b.get(row.id)
        assert got is not None
        assert got.id == row.id
        b.set_limit(None, 5)
        assert a.limits() == (5, {})
    finally:
        a.close()
        b.close()


def test_an_older_schema_is_migrated(backend: Backend, tmp_path: Path) -> None:
    row = _row(tmp_path, "old")
    backend.make_old(row)
    old, new = backend.schema_version()
    assert old < new
    store = backend.open()
    try:
        assert backend.schema_version() == (new, new)
        got = store.get(row.id)
        assert got is not None
        assert got.id == row.id
        # The old task is normal priority and due now; the new tables work.
        assert [r.id for r in store.next_queued(background=True, owner=None, limit=5)] == [row.id]
        assert store.list_jobs() == []
        assert store.limits() == (None, {})
        store.set_limit(None, 7)
        assert store.limits() == (7, {})
    finally:
        store.close()
    again = backend.open()  # opening a current store changes nothing
    try:
        assert backend.schema_version() == (new, new)
        assert again.limits() == (7, {})
    finally:
        again.close()


def test_a_repeated_key_wins_over_a_busy_path(store: Store, tmp_path: Path) -> None:
    store.insert_many([_row(tmp_path, "a", idempotency_key="k"), _row(tmp_path, "b")])
    with pytest.raises(DuplicateKey):  # the path of b is busy too; the key is the answer
        store.insert(_row(tmp_path, "b", idempotency_key="k"))


def test_a_finished_task_cannot_go_live_over_a_busy_path(store: Store, tmp_path: Path) -> None:
    first = _row(tmp_path, "same")
    store.insert(first)
    _finish(store, first, at=1.0)
    store.insert(_row(tmp_path, "same"))  # the path is free again: a new task takes it
    live = dataclasses.replace(first.snap, phase=Phase.QUEUED, detail="queued")
    with pytest.raises(DestinationError, match="already downloads to"):
        store.save(first.id, live, wall_time=2.0, event=("s", "running"))
    got = store.get(first.id)
    assert got is not None
    assert got.snap.phase is Phase.DONE
    assert [e.phase for e in store.events_since("s", 0)] == ["done"]  # nothing of it logged
