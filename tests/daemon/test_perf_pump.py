"""Admission asked for many times in one turn of the loop reads the store's queue once
(issue 19: sixteen completions landing in one group commit each ask for a pump)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bgtransfer._engine._limiter import Limiter
from bgtransfer._engine._scheduler import Scheduler
from bgtransfer._store._base import TaskRow
from bgtransfer._store._sqlite import SQLiteStore


def test_pumps_asked_in_one_turn_run_once_and_later_ones_run_again(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.sqlite3"))
    admitted: list[TaskRow] = []
    sched = Scheduler(
        store,
        Limiter(16, 6),
        {},
        background=True,
        owner="me",
        admit=admitted.append,
        wake=lambda: None,
    )
    runs: list[int] = []

    async def go() -> None:
        for _ in range(16):
            sched.soon(lambda: runs.append(1))
        assert runs == []  # not at once: at the loop's next turn
        await asyncio.sleep(0)
        assert runs == [1]
        sched.soon(lambda: runs.append(2))
        await asyncio.sleep(0)
        assert runs == [1, 2]

    async def go2() -> None:
        sched.soon(lambda: runs.append(5))
        await asyncio.sleep(0)

    async def left_behind() -> None:
        sched.soon(lambda: runs.append(4))
        asyncio.get_running_loop().stop()  # this loop ends before the handle runs
        await asyncio.sleep(60)

    try:
        asyncio.run(go())
        sched.soon(lambda: runs.append(3))  # no loop: a synchronous caller runs it at once
        assert runs == [1, 2, 3]
        loop = asyncio.new_event_loop()
        with pytest.raises(RuntimeError, match="stopped before"):
            loop.run_until_complete(left_behind())
        loop.close()  # its handle never ran
        asyncio.run(go2())  # a new loop pumps again
        assert runs == [1, 2, 3, 5]
    finally:
        store.close()
