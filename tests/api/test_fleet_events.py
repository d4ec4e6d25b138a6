"""Event streams over PostgreSQL when cursors commit out of order (two workers committing at
once): the late event is still delivered, once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest

import bgtransfer
from bgtransfer import StoreUnavailable
from bgtransfer._storeclient._window import Window
from bgtransfer.testing import FaultServer

INSERT = (
    "INSERT INTO events (session, task_id, state, phase, detail, bytes_received, "
    "bytes_expected, error, at) VALUES (%s, %s, 'running', 'queued', %s, 0, NULL, NULL, %s) "
    "RETURNING cursor"
)


def test_window_skips_what_it_delivered_and_gives_up_after_the_lag() -> None:
    now = [0.0]
    w = Window(10, lag=1.0, clock=lambda: now[0])
    assert w.settle() == 10
    assert [w.fresh(c) for c in (9, 10, 12)] == [False, False, True]
    assert w.settle() == 10  # 11 may still commit: read from 10 again
    assert [w.fresh(c) for c in (11, 12)] == [True, False]  # the late one, once
    now[0] = 1.0
    assert w.settle() == 12
    assert w.fresh(12) is False


def test_a_stream_delivers_an_event_committed_after_a_later_cursor(
    pg_url: str, server: FaultServer, tmp_path: Path
) -> None:
    async def go() -> list[str]:
        async with bgtransfer.AsyncSession("ooo", home=tmp_path / "home", store=pg_url) as s:
            t = await s.download(server.url("/gen/10"), tmp_path / "o.bin")
            await t.suspend()
            stream = s.events(since=0)
            got = [await asyncio.wait_for(anext(stream), 10)]  # the replay: "suspended"
            with psycopg.connect(pg_url) as slow, psycopg.connect(pg_url, autocommit=True) as fast:
                # The slow transaction takes its cursor first and commits last.
                early = slow.execute(INSERT, ("ooo", t.id, "early", time.time())).fetchone()
                late = fast.execute(INSERT, ("ooo", t.id, "late", time.time())).fetchone()
                assert early is not None
                assert late is not None
                assert early[0] < late[0]
                got.append(await asyncio.wait_for(anext(stream), 10))
                slow.commit()
            got.append(await asyncio.wait_for(anext(stream), 10))
            await t.resume()  # and the stream goes on, nothing twice
            got.append(await asyncio.wait_for(anext(stream), 10))
            await stream.aclose()
            return [e.detail for e in got]

    assert asyncio.run(go()) == ["suspended", "late", "early", "queued"]


def test_a_replay_from_a_cursor_still_gets_a_late_commit_behind_it(
    pg_url: str, server: FaultServer, tmp_path: Path
) -> None:
    async def go() -> list[str]:
        async with bgtransfer.AsyncSession("ooo", home=tmp_path / "home", store=pg_url) as s:
            t = await s.download(server.url("/gen/10"), tmp_path / "o.bin")
            with psycopg.connect(pg_url) as slow, psycopg.connect(pg_url, autocommit=True) as fast:
                slow.execute(INSERT, ("ooo", t.id, "early", time.time()))
                fast.execute(INSERT, ("ooo", t.id, "late", time.time()))
                stream = s.events(since=0)
                got = [await asyncio.wait_for(anext(stream), 10)]  # replayed
                slow.commit()
            got.append(await asyncio.wait_for(anext(stream), 10))  # live, behind it
            await stream.aclose()
            return [e.detail for e in got]

    assert asyncio.run(go()) == ["late", "early"]


def test_a_wait_and_a_stream_outlive_their_connections_being_killed(
    pg_url: str, server: FaultServer, tmp_path: Path
) -> None:
    from bgtransfer._store._postgres import PostgresStore
    from tests.api.fleet import claim_one, complete

    async def go() -> tuple[str, str]:
        async with bgtransfer.AsyncSession("cut", home=tmp_path / "home", store=pg_url) as s:
            t = await s.download(server.url("/gen/10"), tmp_path / "cut.bin")
            stream = s.events(since=0)
            waiting = asyncio.ensure_future(t.wait(timeout=30))
            await asyncio.sleep(0.5)  # both listen
            with psycopg.connect(pg_url, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND datname = current_database() "
                    "AND backend_type = 'client backend'"
                ).fetchone()
            assert killed is not None
            assert killed[0] >= 2  # the session's store and listener connections
            worker = PostgresStore(pg_url)
            try:
                claim = await asyncio.to_thread(claim_one, worker)
                await asyncio.to_thread(complete, worker, claim, size=10)
            finally:
                worker.close()
            done = await waiting
            event = await asyncio.wait_for(anext(stream), 20)
            await stream.aclose()
            assert event.state is not None
            return done.state.value, event.state.value

    assert asyncio.run(go()) == ("completed", "completed")


def test_a_statement_that_waits_too_long_is_a_typed_error(
    pg_url: str, server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bgtransfer._storeclient import _client

    monkeypatch.setattr(_client, "STATEMENT_TIMEOUT", 0.3)
    with bgtransfer.Session("slow", home=tmp_path / "home", store=pg_url) as s:
        t = s.download(server.url("/gen/10"), tmp_path / "slow.bin")
        with psycopg.connect(pg_url) as holder:  # a transaction that keeps the row locked
            holder.execute("SELECT 1 FROM tasks WHERE id=%s FOR UPDATE", (t.id,))
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=r"did not answer within 0\.3 s"):
                t.suspend()
            assert time.monotonic() - started < 10
        t.suspend()  # the lock gone, it works
        assert t.state is bgtransfer.TaskState.SUSPENDED
