"""An engine driven directly, with its waits on a virtual clock.

``VirtualTime`` is the engine's injected ``sleep`` and ``clock``: a sleep returns at once
(after one turn of the loop) and moves the clock on by what was asked, so a backoff of
minutes costs nothing while the machine still sees the minutes pass. The HTTP exchanges,
files and store are real.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bgtransfer._engine._engine import Engine
from bgtransfer._store._base import TaskRow
from bgtransfer._store._sqlite import SQLiteStore
from bgtransfer._trust import prepare_home

STORE_NAME = "bgtransfer.sqlite3"


class VirtualTime:
    def __init__(self, on_sleep: Callable[[float], None] | None = None) -> None:
        self.slept: list[float] = []
        self.skipped = 0.0
        self.on_sleep = on_sleep  # runs at every sleep, before the clock moves on

    def clock(self) -> float:
        return time.monotonic() + self.skipped

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        if self.on_sleep is not None:
            self.on_sleep(delay)
        self.skipped += max(delay, 0.0)
        await asyncio.sleep(0)


@dataclass
class Finished:
    row: TaskRow
    history: list[dict[str, Any]]  # the task's requests, as ``Task.history()`` gives them


async def run_engine(
    home: Path,
    vt: VirtualTime,
    build: Callable[[], TaskRow],
    *,
    timeout: float = 30.0,
) -> Finished:
    """Submit one task to a fresh engine and return it once it has finished (bounded)."""
    prepare_home(str(home))
    store = SQLiteStore(os.path.join(home, STORE_NAME))
    engine = Engine(store, str(home), clock=vt.clock, sleep=vt.sleep)
    await engine.start()
    try:
        row = build()
        engine.submit(row)
        done = await asyncio.wait_for(engine.wait(row.id), timeout)
        return Finished(done, engine.attempts(row.id))
    finally:
        await engine.close()
        store.close()
