"""Progress events in fleet mode (a real worker, a real PostgreSQL): a stream that asks for
progress gets ``kind: "progress"`` lines as the worker checkpoints a running task, with no
row per tick in the events table; a state-only stream gets none."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psycopg

import bgtransfer
from bgtransfer import TaskState
from bgtransfer._models import Event
from bgtransfer.testing import FaultServer
from tests.fleet.fleet import Fleet

KiB = 1 << 10


def test_a_stream_reports_progress_from_the_workers_checkpoints(
    fleet: Fleet, pg_url: str, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 500 * KiB
    url = server.add(f"prog-{key}", os.urandom(size)) + "?rate=120000"  # about 4 s
    fleet.start("w1")

    async def go() -> tuple[list[Event], list[Event]]:
        async with bgtransfer.AsyncSession("prog", home=tmp_path / "home", store=pg_url) as s:
            both = s.events()
            states = s.events(kinds={"state"})
            task = await s.download(url, tmp_path / "p.bin")
            got: list[Event] = []
            only_states: list[Event] = []

            async def read_states() -> None:
                async for ev in states:
                    only_states.append(ev)
                    if ev.state is TaskState.COMPLETED:
                        return

            reader = asyncio.create_task(read_states())
            async with asyncio.timeout(30):
                async for ev in both:
                    if ev.task_id != task.id:
                        continue
                    got.append(ev)
                    if ev.state is TaskState.COMPLETED:
                        break
                await reader
            await both.aclose()
            await states.aclose()
            return got, only_states

    got, only_states = asyncio.run(go())
    progress = [e for e in got if e.kind == "progress"]
    assert len(progress) >= 2, [(e.kind, e.bytes_received) for e in got]
    seen = [e.bytes_received for e in progress]
    assert seen == sorted(set(seen))  # each line says more bytes than the last
    assert seen[0] > 0
    assert seen[-1] <= size
    assert all(e.cursor is None and e.bytes_expected == size for e in progress)
    assert all(e.state is TaskState.RUNNING for e in progress)
    assert got[-1].kind == "state"
    assert got[-1].bytes_received == size
    assert {e.kind for e in only_states} == {"state"}
    with psycopg.connect(pg_url, autocommit=True) as con:  # progress adds no rows
        (rows,) = con.execute("SELECT COUNT(*) FROM events").fetchone() or (0,)
    assert rows <= len([e for e in got if e.kind == "state"]) + 1  # + the submit's
    assert (tmp_path / "p.bin").stat().st_size == size
