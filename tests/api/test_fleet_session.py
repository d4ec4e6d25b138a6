"""Session(store="postgresql://...") against a real PostgreSQL and the real test server: no
local daemon; submits, lists, waits, controls and streams events straight through the store.
A worker's part is played by ``tests.api.fleet`` (claim, fetch, fenced commit)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import bgtransfer
from bgtransfer import InvalidRequest, InvalidTransition, StoreUnavailable, TaskState
from bgtransfer._daemon._paths import socket_path
from bgtransfer._exceptions import Cancelled
from bgtransfer._models import Phase
from bgtransfer._store._base import LeaseLost
from bgtransfer._store._pgschema import CONTROL_CHANNEL
from bgtransfer._store._postgres import PostgresStore
from bgtransfer.testing import FaultServer, gen_bytes
from tests.api.fleet import claim_one, complete, fetch_and_complete
from tests.daemon.conftest import no_daemon_left  # noqa: F401 - autouse check


@pytest.fixture
def pg(pg_url: str) -> Iterator[PostgresStore]:
    store = PostgresStore(pg_url)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def session(pg_url: str, tmp_path: Path) -> Iterator[bgtransfer.Session]:
    s = bgtransfer.Session("app", home=tmp_path / "home", store=pg_url)
    try:
        yield s
    finally:
        s.close()


def _no_daemon(tmp_path: Path) -> None:
    assert not os.path.exists(socket_path(str(tmp_path / "home")))
    assert not (tmp_path / "home" / "bgtransfer.sqlite3").exists()


def test_submit_goes_to_the_store_and_wait_returns_on_a_commit_from_another_host(
    session: bgtransfer.Session, pg: PostgresStore, server: FaultServer, tmp_path: Path, key: str
) -> None:
    task = session.download(server.url(f"/gen/5000?key={key}"), tmp_path / "a.bin")
    assert task.state is TaskState.RUNNING
    assert task.detail == "queued"
    stored = pg.get(task.id)
    assert stored is not None
    assert stored.background
    assert stored.snap.phase is Phase.QUEUED
    assert pg.queue_depth() == 1
    claim = claim_one(pg)
    assert claim.row.id == task.id
    worker = threading.Thread(target=fetch_and_complete, args=(pg, claim), kwargs={"delay": 0.3})
    worker.start()
    try:
        done = task.wait(timeout=20)
    finally:
        worker.join(10)
    assert done.state is TaskState.COMPLETED
    assert done.error is None
    assert done.bytes_received == 5000
    assert (tmp_path / "a.bin").read_bytes() == gen_bytes(5000)
    assert session.store is not None
    assert session.store.startswith("postgresql://")
    _no_daemon(tmp_path)


def test_download_many_list_pages_and_idempotency(
    session: bgtransfer.Session, pg: PostgresStore, server: FaultServer, tmp_path: Path
) -> None:
    items = [{"url": server.url(f"/gen/{n}"), "path": tmp_path / f"f{n}"} for n in (10, 20, 30)]
    tasks = session.download_many(items)
    assert [pg.get(t.id) is not None for t in tasks] == [True] * 3
    assert [t.id for t in session.tasks()] == [t.id for t in tasks]
    page = session.tasks(state="running", limit=2)
    assert [t.id for t in page] == [t.id for t in tasks[:2]]
    rest = session.tasks(state="running", limit=2, cursor=page[-1].id)
    assert [t.id for t in rest] == [tasks[2].id]
    again = session.download(server.url("/gen/40"), tmp_path / "k", idempotency_key="k1")
    twin = session.download(server.url("/gen/40"), tmp_path / "k", idempotency_key="k1")
    assert twin.id == again.id
    with pytest.raises(InvalidRequest):
        session.download(server.url("/gen/41"), tmp_path / "k", idempotency_key="k1")
    assert session.task(again.id).id == again.id


def test_wait_all_and_uploads_through_the_store(
    session: bgtransfer.Session, pg: PostgresStore, server: FaultServer, tmp_path: Path
) -> None:
    source = tmp_path / "up.bin"
    source.write_bytes(b"u" * 100)
    up = session.upload(source, server.url("/upload/up.bin"))
    down = session.download(server.url("/gen/64"), tmp_path / "d.bin")
    assert up.kind == "upload"
    claims = [claim_one(pg), claim_one(pg)]
    assert {c.row.id for c in claims} == {up.id, down.id}

    def finish_both() -> None:
        time.sleep(0.3)
        for c in claims:
            complete(pg, c, size=100 if c.row.id == up.id else 64)

    worker = threading.Thread(target=finish_both)
    worker.start()
    try:
        done = session.wait_all([up, down], timeout=20)
    finally:
        worker.join(10)
    assert [t.state for t in done] == [TaskState.COMPLETED, TaskState.COMPLETED]
    assert done[0].bytes_sent == 100


def test_suspend_resume_cancel_with_no_worker_alive(
    session: bgtransfer.Session, pg: PostgresStore, server: FaultServer, tmp_path: Path
) -> None:
    task = session.download(server.url("/gen/100"), tmp_path / "c.bin")
    task.suspend()
    assert task.state is TaskState.SUSPENDED
    assert task.detail == "suspended"
    assert pg.claim("w1", 30.0) == []  # a suspended task is nobody's to run
    task.resume()
    assert task.state is TaskState.RUNNING
    assert task.detail == "queued"
    claim = claim_one(pg)  # claimable again
    assert claim.row.id == task.id
    pg.release(task.id, claim.token)
    stored = pg.get(task.id)
    assert stored is not None
    partial = Path(stored.partial)
    partial.write_bytes(b"x" * 50)  # what a worker wrote before it went away
    task.cancel()
    assert task.state is TaskState.COMPLETED
    assert isinstance(task.error, Cancelled)
    assert not partial.exists()
    states = [e.state for e in pg.events_since("app", 0)]
    assert states == ["suspended", "running", "canceling", "completed"]
    with pytest.raises(InvalidTransition):
        task.suspend()  # a finished task refuses, as with the daemon
    task.remove()
    assert pg.get(task.id) is None


def _answer_control(pg_url: str, worker: str, token: int, seen: list[str]) -> None:
    """A worker's control loop: woken by NOTIFY, it reads its requests and applies them
    through its fenced commit."""
    store = PostgresStore(pg_url)
    try:
        with psycopg.connect(pg_url, autocommit=True) as con:
            con.execute(f"LISTEN {CONTROL_CHANNEL}")
            seen.extend(n.payload for n in con.notifies(timeout=20, stop_after=1))
        for task_id, action in store.controls_for(worker):
            seen.append(action)
            row = store.get(task_id)
            assert row is not None
            snap = dataclasses.replace(row.snap, phase=Phase.SUSPENDED, detail="suspended")
            store.save(
                task_id, snap, wall_time=time.time(), event=("app", "suspended"), fence=token
            )
            store.release(task_id, token)
    finally:
        store.close()


def test_a_held_task_is_asked_of_its_worker_which_applies_it(
    session: bgtransfer.Session, pg: PostgresStore, pg_url: str, server: FaultServer,
    tmp_path: Path,
) -> None:  # fmt: skip
    task = session.download(server.url("/gen/100"), tmp_path / "h.bin")
    claim = claim_one(pg, "w1", lease_s=60.0)
    seen: list[str] = []
    holder = threading.Thread(target=_answer_control, args=(pg_url, "w1", claim.token, seen))
    holder.start()
    time.sleep(0.2)  # it listens
    try:
        task.suspend()  # returns once the holder applied it
    finally:
        holder.join(20)
    assert seen == [task.id, "suspend"]
    assert task.state is TaskState.SUSPENDED
    assert pg.pending_control(task.id) is None  # cleared by the commit that applied it
    assert pg.lease(task.id) == (None, None, claim.token)  # not fenced off: it was the holder


def test_request_control_records_and_notifies_only_for_a_live_lease(
    pg: PostgresStore,
    pg_url: str,
    tmp_path: Path,
) -> None:
    from bgtransfer._tasks import build_row

    row = build_row("app", "http://h/x", tmp_path / "x", background=True)
    pg.insert(row)
    assert pg.request_control(row.id, "suspend") is False  # nobody holds it
    with pytest.raises(InvalidRequest):
        pg.request_control(row.id, "explode")
    claim = claim_one(pg, "w1")
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute(f"LISTEN {CONTROL_CHANNEL}")
        assert pg.request_control(row.id, "cancel") is True
        notes = [n.payload for n in con.notifies(timeout=5, stop_after=1)]
    assert notes == [row.id]
    assert pg.controls_for("w1") == [(row.id, "cancel")]
    assert pg.controls_for("w2") == []
    assert pg.clear_control(row.id, claim.token + 1) is False  # not the holder's token
    assert pg.clear_control(row.id, claim.token) is True
    assert pg.controls_for("w1") == []


def test_a_holder_whose_lease_runs_out_is_fenced_and_the_client_applies_it(
    session: bgtransfer.Session, pg: PostgresStore, server: FaultServer, tmp_path: Path
) -> None:
    task = session.download(server.url("/gen/100"), tmp_path / "z.bin")
    claim = claim_one(pg, "zombie", lease_s=1.0)
    task.cancel()  # asked; nobody answers; applied here once the lease ran out
    assert task.state is TaskState.COMPLETED
    assert isinstance(task.error, Cancelled)
    with pytest.raises(LeaseLost):
        complete(pg, claim, size=100)  # the zombie's commit is refused
    assert pg.get(task.id).snap.error is not None  # type: ignore[union-attr]


def test_events_stream_replays_from_a_cursor_then_goes_live(
    pg_url: str,
    pg: PostgresStore,
    server: FaultServer,
    tmp_path: Path,
) -> None:
    async def go() -> None:
        async with bgtransfer.AsyncSession("ev", home=tmp_path / "home", store=pg_url) as s:
            t = await s.download(server.url("/gen/10"), tmp_path / "e.bin")
            await t.suspend()
            await t.resume()
            stream = s.events(since=0, kinds={"state"})
            first = await asyncio.wait_for(anext(stream), 10)
            second = await asyncio.wait_for(anext(stream), 10)
            assert [first.state, second.state] == [TaskState.SUSPENDED, TaskState.RUNNING]
            assert stream.cursor == second.cursor
            claim = await asyncio.to_thread(claim_one, pg)
            await asyncio.to_thread(complete, pg, claim, size=10)
            live = await asyncio.wait_for(anext(stream), 10)  # woken by NOTIFY
            assert live.state is TaskState.COMPLETED
            assert live.task_id == t.id
            assert live.cursor is not None
            assert second.cursor is not None
            assert live.cursor > second.cursor
            await stream.aclose()
            # From the cursor before the completion: only the completion again.
            again = s.events(since=second.cursor)
            assert (await asyncio.wait_for(anext(again), 10)).cursor == live.cursor
            await again.aclose()
            # completions(): at least once until acknowledged, then never again.
            got = [x async for x in s.completions(timeout=1.0)]
            assert [x.id for x in got] == [t.id]
            await got[0].acknowledge()
            assert [x async for x in s.completions(timeout=0.5)] == []

    asyncio.run(go())


def test_the_environment_chooses_the_store(
    monkeypatch: pytest.MonkeyPatch, pg_url: str, pg: PostgresStore, tmp_path: Path,
    server: FaultServer,
) -> None:  # fmt: skip
    monkeypatch.setenv("BGTRANSFER_STORE", pg_url)
    with bgtransfer.Session("envapp", home=tmp_path / "home") as s:
        t = s.download(server.url("/gen/10"), tmp_path / "env.bin")
    assert pg.get(t.id) is not None
    _no_daemon(tmp_path)
    # A foreground session runs in this process, on its home's own store, whatever the
    # environment says for background work; an explicit store= for it is refused.
    with bgtransfer.Session("fg", home=tmp_path / "home", background=False) as s:
        assert s.store is None
    with pytest.raises(InvalidRequest, match="background=False"):
        bgtransfer.Session("fg", home=tmp_path / "home", background=False, store=pg_url)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u@h/db",
        "sqlite://relative/path",
        "postgresql://u:hunter2@db.example:5432",  # no database
        "postgresql://u:hunter2@db.example:99999/db",  # no such port
        "nothing-like-a-url",
        "",
    ],
)
def test_bad_store_urls_are_refused_at_once_without_their_password(
    url: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidRequest) as err:
        bgtransfer.Session("app", home=tmp_path / "home", store=url)
    assert "hunter2" not in str(err.value)


def test_sqlite_store_url_names_a_home(tmp_path: Path) -> None:
    home = tmp_path / "h2"
    s = bgtransfer.AsyncSession("app", store=f"sqlite://{home}/bgtransfer.sqlite3")
    assert s.home == str(home)
    assert s.store is None
    assert bgtransfer.AsyncSession("app", store=f"sqlite://{home}").home == str(home)
    with pytest.raises(InvalidRequest, match="two homes"):
        bgtransfer.AsyncSession("app", home=tmp_path / "other", store=f"sqlite://{home}")


def test_postgres_down_or_refusing_is_a_typed_error_without_the_password(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        bgtransfer.Session(
            "app", home=tmp_path / "home", store=f"postgresql://u:hunter2@127.0.0.1:{port}/db"
        )
    assert time.monotonic() - started < 15  # bounded by the connect timeout
    assert "hunter2" not in str(err.value)
    assert "cannot connect" in str(err.value)


def test_a_schema_newer_than_this_version_is_refused(
    pg_url: str, pg: PostgresStore, tmp_path: Path
) -> None:
    pg._db.execute("UPDATE bgtransfer_schema SET version=99")
    with pytest.raises(StoreUnavailable, match="newer"):
        bgtransfer.Session("app", home=tmp_path / "home", store=pg_url)
