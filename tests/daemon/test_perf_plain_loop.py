"""The plain loop (issue 19): ``download()`` for each file, then ``wait()`` for each.

A ``wait()`` that has to ask the daemon also names the session's other unfinished tasks; the
daemon reports those whose completion is committed, and the waits on them that follow are
answered without a round trip. Checked against a real daemon subprocess: once a wait has
reported the others, the daemon is frozen (SIGSTOP) and the remaining waits still return
with their committed rows; a wait that asked the daemon would hang and then fail.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer._client import DaemonClient
from bgtransfer._exceptions import InvalidRequest, TaskNotFound
from bgtransfer._models import Phase
from bgtransfer._options import DownloadOptions
from bgtransfer._session._known import LIMIT, Unfinished
from bgtransfer._store._sqlite import SQLiteStore
from bgtransfer._tasks import download_row
from bgtransfer.testing import FaultServer, gen_bytes
from tests.daemon.conftest import run_cli


@pytest.fixture
def daemon(home: Path) -> Path:
    r = run_cli(home, "daemon", "start")
    assert r.returncode == 0, r.stderr
    return home


def daemon_pid(home: Path) -> int:
    return int((home / "daemon.lock").read_text().strip())


def test_waits_after_one_that_reported_the_others_need_no_round_trip(
    daemon: Path, server: FaultServer, tmp_path: Path, key: str
) -> None:
    n = 6
    urls = [server.url(f"/gen/3000?seed={i}&key={key}{i}") for i in range(n)]
    with bgtransfer.Session("plain", home=daemon) as s:
        tasks = [s.download(u, tmp_path / f"f{i}") for i, u in enumerate(urls)]
        # Another session object waits for the first five: this one has not seen them
        # finish, so its task objects still say running.
        with bgtransfer.Session("plain", home=daemon) as other:
            other.wait_all([other.task(t.id) for t in tasks[:-1]], timeout=60)
        assert all(t._inner._row.snap.phase is not Phase.DONE for t in tasks[:-1])
        tasks[-1].wait(timeout=60)  # asks the daemon, which reports the other five
        pid = daemon_pid(daemon)
        os.kill(pid, signal.SIGSTOP)
        try:
            for t in tasks[:-1]:
                t.wait(timeout=5)  # from memory: a round trip would hang on the frozen daemon
        finally:
            os.kill(pid, signal.SIGCONT)
        for i, t in enumerate(tasks):
            assert t.state is bgtransfer.TaskState.COMPLETED
            assert t.error is None
            assert t.bytes_received == 3000
            assert (tmp_path / f"f{i}").read_bytes() == gen_bytes(3000, seed=i)


def test_a_wait_reports_only_committed_completions(
    daemon: Path, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """``also`` names a finished task, a held one and an unknown id: only the first is in
    ``done``; the held one stays tracked and is waited for when asked."""

    async def go() -> dict[str, Any]:
        async with bgtransfer.AsyncSession("plain", home=daemon) as s:
            done = await s.download(server.url(f"/gen/100?key={key}a"), tmp_path / "a")
            await done.wait(timeout=60)
            held = await s.download(
                server.url(f"/gen/100?key={key}b"), tmp_path / "b", start_at=4e9
            )
            client = DaemonClient(str(daemon))
            answer: dict[str, Any] = await client.call(
                "POST",
                "/v1/wait",
                body={"ids": [done.id], "timeout": 5, "also": [done.id, held.id, "nope"]},
            )
            assert [t["id"] for t in answer["tasks"]] == [done.id]
            await held.cancel()
            return answer

    answer = asyncio.run(go())
    assert [t["id"] for t in answer["done"]] == [answer["tasks"][0]["id"]]
    assert answer["done"][0]["state"] == "completed"


@pytest.mark.parametrize("also", ["x", [1], ["a"] * 10_001])
def test_a_bad_also_list_is_a_typed_error(daemon: Path, also: object) -> None:
    async def go() -> None:
        await DaemonClient(str(daemon)).call(
            "POST", "/v1/wait", body={"ids": ["x"], "timeout": 1, "also": also}
        )

    with pytest.raises(InvalidRequest, match="also must be a list"):
        asyncio.run(go())


def test_done_rows_reads_only_finished_tasks_in_chunks(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.sqlite3"))
    try:
        rows = [
            download_row(
                "s",
                f"http://127.0.0.1:9/{i}",
                str(tmp_path / f"t{i}"),
                DownloadOptions(),
                background=True,
                idempotency_key=f"k{i}",
            )
            for i in range(1200)  # more than one chunk of 500
        ]
        store.insert_many(rows)
        finished = {r.id for r in rows[::7]}
        db = store._db
        db.executemany("UPDATE tasks SET phase='done' WHERE id=?", [(i,) for i in finished])
        assert store.known_ids([r.id for r in rows] + ["unknown"]) == {r.id for r in rows}
        found = store.done_rows([r.id for r in rows] + ["unknown"])
        assert {r.id for r in found} == finished
        assert all(r.snap.phase.value == "done" for r in found)
        assert store.done_rows([]) == []
    finally:
        store.close()


class _T:
    def __init__(self, row: Any) -> None:
        self._row = row


def test_the_tracker_names_the_oldest_others_and_forgets_dropped_tasks(tmp_path: Path) -> None:
    def row(i: int) -> Any:
        return download_row(
            "s",
            f"http://127.0.0.1:9/{i}",
            str(tmp_path / f"t{i}"),
            DownloadOptions(),
            background=True,
            idempotency_key=f"k{i}",
        )

    tracker = Unfinished()
    held = [_T(row(i)) for i in range(LIMIT + 5)]
    for t in held:
        tracker.add(t)
    others = tracker.others(held[0]._row.id)
    assert len(others) == LIMIT
    assert others[0] == held[1]._row.id  # oldest first, the asker left out
    dropped = held.pop()  # the application let go of it: no longer named
    dropped_id = dropped._row.id
    del dropped
    assert dropped_id not in tracker.others("")
    finished = row(0)
    finished.id = held[3]._row.id
    finished.snap.phase = Phase.DONE
    tracker.learn([finished])
    assert held[3]._row is finished
    assert held[3]._row.id not in tracker.others("")


def test_a_batch_wait_naming_an_unknown_task_is_not_found(
    daemon: Path, server: FaultServer, tmp_path: Path, key: str
) -> None:
    async def go() -> None:
        async with bgtransfer.AsyncSession("plain", home=daemon) as s:
            done = await s.download(server.url(f"/gen/100?key={key}"), tmp_path / "a")
            await done.wait(timeout=60)
            client = DaemonClient(str(daemon))
            answer = await client.call("POST", "/v1/wait", body={"ids": [done.id], "timeout": 5})
            assert answer["tasks"][0]["state"] == "completed"
            with pytest.raises(TaskNotFound, match="no task with id 'nope'"):
                await client.call("POST", "/v1/wait", body={"ids": [done.id, "nope"], "timeout": 5})

    asyncio.run(go())
