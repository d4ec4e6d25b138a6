"""The app developer's contract (issue 18, issue 12 items 1-2): completions delivered at
least once until acknowledged and never after, also across daemon restarts; repeatable
submits; metadata; task queries; completions(); refused per-session limits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer import TaskState
from bgtransfer.testing import FaultServer, gen_bytes

from .conftest import kill_daemon, run_cli

SIZE = 1 << 16
FAST: dict[str, Any] = {"retry_wait": 0.05, "max_retry_wait": 0.2}


def completed_ids(events: list[bgtransfer.Event]) -> list[str]:
    return [e.task_id for e in events if e.kind == "state" and e.state is TaskState.COMPLETED]


# -- the bug: acknowledged completions came back after a daemon restart --------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "graceful"])
def test_acknowledged_completion_is_not_redelivered_after_a_daemon_restart(
    server: FaultServer, home: Path, tmp_path: Path, key: str, sig: int
) -> None:
    url = server.url(f"/gen/{SIZE}?key={key}")

    async def scenario() -> tuple[list[bgtransfer.Event], list[str], list[str], str, str]:
        async with bgtransfer.AsyncSession("app", home=home) as s:
            # B finishes first and stays unacknowledged; A finishes later and is acknowledged:
            # a stream that resumed from B's cursor used to replay A's completion again.
            b = await s.download(url, tmp_path / "b.bin", **FAST)
            await b.wait(timeout=30)
            a = await s.download(url, tmp_path / "a.bin", **FAST)
            await a.wait(timeout=30)
            await a.acknowledge()

            got: list[bgtransfer.Event] = []
            stream = s.events()
            replayed = asyncio.Event()
            c_done = asyncio.Event()
            c_id: list[str] = []

            stopped: list[bool] = []

            async def collect() -> None:
                current = stream
                while True:
                    try:
                        async for ev in current:
                            got.append(ev)
                            if current.replay_cursor is not None or ev.task_id == b.id:
                                replayed.set()
                            if c_id and ev.task_id == c_id[0] and ev.state is TaskState.COMPLETED:
                                c_done.set()
                        return
                    except bgtransfer.DaemonStopped:
                        # A stop on request ends the stream (issue 12.7): the app opens a new
                        # one from where it was, which must not bring back A either.
                        stopped.append(True)
                        current = s.events(since=current.cursor)

            reader = asyncio.create_task(collect())
            await asyncio.wait_for(replayed.wait(), 20)
            await asyncio.to_thread(kill_daemon, home, sig)
            # The stream reconnects (starting the daemon again); a new task proves it lives.
            c = await s.download(url, tmp_path / "c.bin", **FAST)
            c_id.append(c.id)
            await asyncio.wait_for(c_done.wait(), 30)
            reader.cancel()

            later: list[str] = []
            fresh = s.events()

            async def replay_only() -> None:
                async for ev in fresh:
                    later.append(ev.task_id)  # noqa: PERF401 - appended as they stream in

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(replay_only(), 1.5)
            done = [t.id async for t in s.completions(timeout=1.5)]
            assert bool(stopped) == (sig == signal.SIGTERM)  # only a stop ends the stream
            return got, later, done, a.id, b.id

    got, later, done, a_id, b_id = asyncio.run(asyncio.wait_for(scenario(), 90))
    delivered = completed_ids(got)
    assert a_id not in delivered  # acknowledged: never again, restart or not
    assert delivered.count(b_id) == 1  # unacknowledged: once on this stream
    assert len(delivered) == 2  # B, then C live after the reconnect
    # A new stream (a relaunched app) gets every unacknowledged completion again.
    assert a_id not in later
    assert b_id in later
    assert a_id not in done
    assert b_id in done
    assert len(done) == 2


def test_since_cursor_never_replays_an_acknowledged_completion(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    with bgtransfer.Session("cur", home=home) as s:
        t = s.download(server.url(f"/gen/{SIZE}?key={key}"), tmp_path / "x.bin", **FAST)
        t.wait(timeout=30)
        u = s.download(server.url(f"/gen/{SIZE}?key={key}"), tmp_path / "y.bin", **FAST)
        u.wait(timeout=30)
        t.acknowledge()

    async def from_zero() -> list[bgtransfer.Event]:
        async with bgtransfer.AsyncSession("cur", home=home) as s:
            out: list[bgtransfer.Event] = []
            stream = s.events(since=0, kinds={"state"})
            async for ev in stream:
                out.append(ev)
                if ev.task_id == u.id and ev.state is TaskState.COMPLETED:
                    break
            return out

    evs = asyncio.run(asyncio.wait_for(from_zero(), 30))
    assert {e.task_id for e in evs} == {t.id, u.id}  # t's earlier state events remain
    assert completed_ids(evs) == [u.id]


# -- issue 12 item 1: an early acknowledgement must not swallow the completion -------------


@pytest.mark.parametrize("background", [True, False], ids=["daemon", "foreground"])
def test_acknowledge_of_an_unfinished_task_is_refused_and_its_completion_comes(
    server: FaultServer, home: Path, tmp_path: Path, key: str, background: bool
) -> None:
    url = server.url(f"/gen/{SIZE}?rate=100000&key={key}")
    with bgtransfer.Session("early", home=home, background=background) as s:
        t = s.download(url, tmp_path / "e.bin", **FAST)
        with pytest.raises(bgtransfer.InvalidTransition, match="has not finished"):
            t.acknowledge()
        assert t.acknowledged is False
        stream = s.completions(timeout=30)
        done = next(stream)  # the first completion; the stream would wait 30 s for more
        stream.close()
        assert done.id == t.id
        assert done.error is None
        assert done.acknowledged is False
        done.acknowledge()
        assert s.task(t.id).acknowledged is True
        assert list(s.completions(timeout=0.5)) == []


def test_store_migration_gives_back_early_acknowledgements(tmp_path: Path) -> None:
    from bgtransfer._store._sqlite import SQLiteStore
    from bgtransfer._tasks import build_row

    path = tmp_path / "s.db"
    store = SQLiteStore(str(path))
    row = build_row("m", "http://127.0.0.1:1/x", str(tmp_path / "m.bin"), background=True)
    store.insert(row)
    assert store.acknowledge(row.id) is False  # not finished: nothing stored
    store.close()
    con = sqlite3.connect(path)
    con.execute("UPDATE tasks SET acknowledged=1")  # what version 7 stored
    con.execute("PRAGMA user_version=7")
    con.commit()
    con.close()
    store = SQLiteStore(str(path))
    try:
        got = store.get(row.id)
        assert got is not None
        assert got.acknowledged is False
    finally:
        store.close()


# -- item 1: repeatable submits ------------------------------------------------------------


def test_idempotency_key_returns_the_same_task_whatever_its_state(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    url = server.url(f"/gen/{SIZE}?rate=200000&key={key}")
    dest = tmp_path / "k.bin"
    with bgtransfer.Session("idem", home=home) as s:
        t = s.download(url, dest, idempotency_key="file-1", **FAST)
        again = s.download(url, dest, idempotency_key="file-1", **FAST)  # still running
        assert again.id == t.id
        assert again.idempotency_key == "file-1"
        t.wait(timeout=30)
        assert dest.read_bytes() == gen_bytes(SIZE)
        # Finished, its file in place: the same task back, not "target already exists".
        third = s.download(url, dest, idempotency_key="file-1", headers={"X-New": "token"})
        assert third.id == t.id
        assert third.state is TaskState.COMPLETED
        with pytest.raises(bgtransfer.InvalidRequest, match=r"another request.*url"):
            s.download(url + "&v=2", dest, idempotency_key="file-1")
        with pytest.raises(bgtransfer.InvalidRequest, match="metadata"):
            s.download(url, dest, idempotency_key="file-1", metadata={"v": 2})
        with pytest.raises(bgtransfer.InvalidRequest, match="idempotency_key"):
            s.download(url, dest, idempotency_key="")
        many = s.download_many(
            [
                {"url": url, "path": dest, "idempotency_key": "file-1"},
                {"url": url, "path": tmp_path / "k2.bin", "idempotency_key": "file-2"},
                {"url": url, "path": tmp_path / "k2.bin", "idempotency_key": "file-2"},
            ]
        )
        assert many[0].id == t.id
        assert many[1].id == many[2].id != t.id
        assert len(s.tasks()) == 2
        src = tmp_path / "up.bin"
        src.write_bytes(b"x" * 1000)
        up = s.upload(src, server.url(f"/upload/{key}"), idempotency_key="up-1")
        assert s.upload(src, server.url(f"/upload/{key}"), idempotency_key="up-1").id == up.id
    with bgtransfer.Session("other", home=home) as other:  # keys are per session
        with pytest.raises(bgtransfer.InvalidRequest, match="already exists"):
            other.download(url, dest, idempotency_key="file-1")
        o = other.download(url, tmp_path / "o.bin", idempotency_key="file-1")
        assert o.id != t.id


CONCURRENT_SUBMIT = """
import sys, bgtransfer
home, url, dest = sys.argv[1:4]
with bgtransfer.Session("race", home=home) as s:
    print(s.download(url, dest, idempotency_key="only-one", retry_wait=0.05).id)
"""


def test_concurrent_clients_with_one_key_get_one_task(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    url, dest = server.url(f"/gen/{SIZE}?key={key}"), str(tmp_path / "r.bin")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_SUBMIT, str(home), url, dest],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e for _, e in outs]
    ids = {o.strip() for o, _ in outs}
    assert len(ids) == 1
    with bgtransfer.Session("race", home=home) as s:
        assert [t.id for t in s.tasks()] == list(ids)


def test_foreground_idempotency_key(server: FaultServer, home: Path, tmp_path: Path) -> None:
    url = server.url(f"/gen/{SIZE}")
    with bgtransfer.Session("fg", home=home, background=False) as s:
        t = s.download(url, tmp_path / "f.bin", idempotency_key="k", metadata={"n": 1})
        t.wait(timeout=30)
        assert (
            s.download(url, tmp_path / "f.bin", idempotency_key="k", metadata={"n": 1}).id == t.id
        )
        with pytest.raises(bgtransfer.InvalidRequest, match="another request"):
            s.download(url, tmp_path / "g.bin", idempotency_key="k")
        with pytest.raises(bgtransfer.InvalidRequest, match="already exists"):
            s.download(url, tmp_path / "f.bin", idempotency_key="new")


# -- item 2: metadata and the submitted options read back ----------------------------------


def test_metadata_is_stored_listed_and_in_events(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    body = gen_bytes(SIZE)
    import hashlib

    digest = hashlib.sha256(body).hexdigest()
    meta = {"album": "x", "n": 3, "tags": ["a", "b"], "nested": {"ok": True}}
    with bgtransfer.Session("meta", home=home) as s:
        t = s.download(
            server.url(f"/gen/{SIZE}?key={key}"),
            tmp_path / "m.bin",
            metadata=meta,
            sha256=digest,
            segments=2,
            request_timeout=30.0,
            **FAST,
        )
        assert t.metadata == meta
        assert t.sha256 == digest
        assert t.options["segments"] == 2
        assert t.options["request_timeout"] == 30.0
        t.wait(timeout=30)
        assert s.task(t.id).metadata == meta
        (done,) = list(s.completions(timeout=2))  # finished: the replay brings it at once
        assert done.metadata == meta
        with pytest.raises(bgtransfer.InvalidRequest, match="16384"):
            s.download(server.url("/gen/10"), tmp_path / "big.bin", metadata={"x": "y" * 20000})
        with pytest.raises(bgtransfer.InvalidRequest, match="JSON object"):
            s.download(server.url("/gen/10"), tmp_path / "l.bin", metadata=["not", "a", "dict"])  # type: ignore[arg-type]
        with pytest.raises(bgtransfer.InvalidRequest, match="JSON-serialisable"):
            s.download(server.url("/gen/10"), tmp_path / "o.bin", metadata={"x": object()})
        assert len(s.tasks()) == 1  # refused submits created nothing
    listed = json.loads(run_cli(home, "ls", "--json").stdout)
    assert listed[0]["metadata"] == meta
    assert listed[0]["sha256"] == digest

    async def events() -> bgtransfer.Event:
        async with bgtransfer.AsyncSession("meta", home=home) as s:
            async for ev in s.events(since=0):
                return ev
        raise AssertionError("no event")

    assert asyncio.run(asyncio.wait_for(events(), 20)).metadata == meta


# -- item 3: queries -----------------------------------------------------------------------


def test_tasks_filter_and_page_with_a_cursor(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    with bgtransfer.Session("q", home=home) as s:
        done = [
            s.download(server.url(f"/gen/{SIZE}?key={key}"), tmp_path / f"d{i}", **FAST)
            for i in range(5)
        ]
        s.wait_all(done, timeout=60)
        mark = time.time()
        slow = [
            s.download(server.url(f"/gen/{SIZE}?rate=1000&key={key}"), tmp_path / f"s{i}", **FAST)
            for i in range(2)
        ]
        for t in slow:
            t.suspend()
        pages: list[list[str]] = []
        cursor = None
        for _ in range(5):  # bounded: 5 tasks in pages of 2 take 3
            page = s.tasks(state=TaskState.COMPLETED, limit=2, cursor=cursor)
            if not page:
                break
            pages.append([t.id for t in page])
            cursor = page[-1].id
        assert [len(p) for p in pages] == [2, 2, 1]
        assert [i for p in pages for i in p] == [t.id for t in done]  # creation order
        assert {t.id for t in s.tasks(state="suspended")} == {t.id for t in slow}
        assert {t.id for t in s.tasks(since=mark)} == {t.id for t in slow}
        assert len(s.tasks(state=["completed", TaskState.SUSPENDED])) == 7
        assert len(s.tasks()) == 7
        with pytest.raises(bgtransfer.InvalidRequest, match="state"):
            s.tasks(state="finished")
        with pytest.raises(bgtransfer.InvalidRequest, match="limit"):
            s.tasks(limit=0)
        with pytest.raises(bgtransfer.TaskNotFound, match="cursor"):
            s.tasks(cursor="nope")
        for t in slow:
            t.cancel()
    r = run_cli(home, "ls", "--state", "completed", "--limit", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert [t["id"] for t in json.loads(r.stdout)] == pages[0]
    r = run_cli(home, "ls", "--state", "completed", "--after", pages[0][-1], "--json")
    # The cancelled tasks are completed now too, and come last (created last).
    after = [t["id"] for t in json.loads(r.stdout)]
    assert after == pages[1] + pages[2] + [t.id for t in slow]
    r = run_cli(home, "ls", "--state", "done")
    assert r.returncode == 64
    assert "done" in r.stderr


def test_the_state_query_uses_an_index(tmp_path: Path) -> None:
    from bgtransfer._store._sqlite import SQLiteStore

    store = SQLiteStore(str(tmp_path / "s.db"))
    try:
        plan = store._db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE session=? AND phase IN ('done') "
            "AND (created_at, id) > (?, ?) ORDER BY created_at, id LIMIT 50",
            ("s", 0.0, ""),
        ).fetchall()
        text = " ".join(str(r[-1]) for r in plan)
        assert "tasks_session_phase" in text
        assert "SCAN" not in text
    finally:
        store.close()


# -- item 4: completions and event streams -------------------------------------------------


def test_completions_replay_then_live_and_each_once(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    with bgtransfer.Session("c", home=home) as s:
        first = s.download(server.url(f"/gen/{SIZE}?key={key}"), tmp_path / "1", **FAST)
        first.wait(timeout=30)
        second = s.download(
            server.url(f"/gen/{SIZE}?rate=200000&key={key}"), tmp_path / "2", **FAST
        )
        got = []
        for t in s.completions(timeout=20):  # replayed first, then the live one
            got.append(t.id)
            t.acknowledge()
            if len(got) == 2:
                break
        assert got == [first.id, second.id]
        assert list(s.completions(timeout=0.5)) == []


def test_events_kinds_filter_and_cursor_resume(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    async def scenario() -> tuple[list[bgtransfer.Event], list[bgtransfer.Event], int | None]:
        async with bgtransfer.AsyncSession("k", home=home) as s:
            with pytest.raises(bgtransfer.InvalidRequest, match="kinds"):
                s.events(kinds={"bogus"})
            stream = s.events(kinds={"state"})
            first: list[bgtransfer.Event] = []
            t = await s.download(
                server.url(f"/gen/{SIZE * 4}?rate=400000&key={key}"), tmp_path / "k1", **FAST
            )
            async for ev in stream:
                first.append(ev)
                if ev.task_id == t.id and ev.state is TaskState.COMPLETED:
                    break
            replay_end = stream.replay_cursor
            resume = stream.cursor
            await stream.aclose()
            u = await s.download(server.url(f"/gen/{SIZE}?key={key}"), tmp_path / "k2", **FAST)
            await u.wait(timeout=30)
            second: list[bgtransfer.Event] = []
            again = s.events(since=resume, kinds={"state"})
            async for ev in again:
                second.append(ev)
                if ev.task_id == u.id and ev.state is TaskState.COMPLETED:
                    break
            # u finished before this stream began: all of it came from the replay.
            assert again.replay_cursor is None
            assert resume is not None
            assert all(e.cursor is not None and e.cursor > resume for e in second)
            return first, second, replay_end

    first, second, replay_end = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert first
    assert all(e.kind == "state" for e in first)
    assert replay_end is not None
    assert all(e.cursor is not None and e.cursor > replay_end for e in first)
    assert {e.task_id for e in second} == {second[-1].task_id}  # only what came after
    assert all(e.kind == "state" for e in second)


# -- item 5: limits that are not silently ignored ------------------------------------------


def test_per_session_limits_are_refused_on_background_sessions(home: Path) -> None:
    with pytest.raises(bgtransfer.InvalidRequest, match="BGTRANSFER_MAX_ACTIVE"):
        bgtransfer.Session("lim", home=home, background=True, max_active=1)
    with pytest.raises(bgtransfer.InvalidRequest, match="BGTRANSFER_MAX_PER_HOST"):
        bgtransfer.AsyncSession("lim", home=home, max_per_host=2)
    with bgtransfer.Session("lim", home=home, background=False, max_active=1) as s:
        assert s._async._engine_or_raise().limiter.total == 1


def test_one_completions_stream_across_a_daemon_kill_yields_each_task_once(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    url = server.url(f"/gen/{SIZE}?key={key}")
    with bgtransfer.Session("once", home=home) as s:
        a = s.download(url, tmp_path / "a", **FAST)
        a.wait(timeout=30)
        got: list[bgtransfer.Task] = []
        b_id = ""
        for t in s.completions(timeout=5):
            got.append(t)
            if t.id == a.id:  # not acknowledged yet: the reconnect's replay brings it again
                kill_daemon(home)
                b_id = s.download(url, tmp_path / "b", **FAST).id
            if len(got) == 2:
                break
        assert [t.id for t in got] == [a.id, b_id]
        for t in got:
            t.acknowledge()
        assert list(s.completions(timeout=0.5)) == []


@pytest.mark.parametrize("background", [True, False], ids=["daemon", "foreground"])
def test_a_keyed_resubmit_finds_its_task_after_the_source_or_directory_is_gone(
    server: FaultServer, home: Path, tmp_path: Path, key: str, background: bool
) -> None:
    src = tmp_path / "photo.jpg"
    src.write_bytes(b"p" * 5000)
    sub = tmp_path / "sub"
    sub.mkdir()
    url = server.url(f"/gen/{SIZE}?key={key}")
    with bgtransfer.Session("gone", home=home, background=background) as s:
        up = s.upload(src, server.url(f"/upload/{key}"), idempotency_key="photo")
        down = s.download(url, sub / "d.bin", idempotency_key="d")
        s.wait_all([up, down], timeout=30)
        src.unlink()  # the app frees space once a photo is backed up
        (sub / "d.bin").unlink()
        sub.rmdir()
        assert s.upload(src, server.url(f"/upload/{key}"), idempotency_key="photo").id == up.id
        assert s.download(url, sub / "d.bin", idempotency_key="d").id == down.id
        (again,) = s.download_many([{"url": url, "path": sub / "d.bin", "idempotency_key": "d"}])
        assert again.id == down.id
        with pytest.raises(bgtransfer.InvalidRequest, match="source file"):
            s.upload(src, server.url(f"/upload/{key}-other"), idempotency_key="photo")
        with pytest.raises(bgtransfer.InvalidRequest, match="directory does not exist"):
            s.download(url, sub / "d.bin", idempotency_key="new")


def test_the_daemon_answers_a_keyed_submit_whose_source_is_gone_with_its_task(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    from bgtransfer._client import DaemonClient

    src = tmp_path / "s.bin"
    src.write_bytes(b"s" * 100)
    with bgtransfer.Session("raw", home=home) as s:
        up = s.upload(src, server.url(f"/upload/{key}"), idempotency_key="k").wait(timeout=30)
    src.unlink()
    body = {"kind": "upload", "session": "raw", "url": server.url(f"/upload/{key}")}
    body |= {"path": str(src), "idempotency_key": "k"}

    async def call() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        c = DaemonClient(str(home))
        got = await c.call("POST", "/v1/tasks", body=body)
        found = await c.call("GET", "/v1/tasks", params={"session": "raw", "key": "k"})
        with pytest.raises(bgtransfer.InvalidRequest, match="source file"):
            await c.call("POST", "/v1/tasks", body={**body, "idempotency_key": "k2"})
        return got, found

    got, found = asyncio.run(call())
    assert got["id"] == up.id
    assert [t["id"] for t in found] == [up.id]
