"""Progress events in fleet mode, without a row per tick: the store logs state events only,
and each checkpoint of a running task (its offset, committed by its worker) notifies the
task's session (``NOTIFY bgtransfer_progress``, a trigger). A stream that reports progress
then reads its session's running tasks and reports those whose checkpointed bytes moved, as
``kind: "progress"`` lines like the daemon's (no cursor: progress is not in the log).

So progress moves at the pace of checkpoints (every second, or every few MiB), not of each
read from the socket as with a daemon; reads are at most ``EVERY`` seconds apart, however
many checkpoints land.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from bgtransfer._models import Event, TaskState
from bgtransfer._store._postgres import PostgresStore

__all__ = ["EVERY", "Progress"]

EVERY = 0.5  # seconds between two reads of a stream's progress, at least

Run = Callable[..., Awaitable[Any]]


class Progress:
    def __init__(
        self,
        db: PostgresStore,
        run: Run,
        session: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db, self.run, self.session, self.clock = db, run, session, clock
        self.reported: dict[str, int] = {}  # task id -> the bytes its last line said
        self.last = float("-inf")  # when the running tasks were last read
        self.pending = True  # something may have moved since

    def wait(self, longest: float) -> float:
        """Seconds the stream may sleep before its next read is due."""
        if not self.pending:
            return longest
        return min(longest, max(0.0, self.last + EVERY - self.clock()))

    async def lines(self) -> list[dict[str, Any]]:
        """Progress lines of the tasks whose bytes moved since they were last reported
        (none when the last read was less than EVERY seconds ago: asked again later)."""
        if not self.pending or self.clock() < self.last + EVERY:
            return []
        self.pending = False
        self.last = self.clock()
        rows = await self.run(self.db.running_in, self.session)
        out = []
        reported: dict[str, int] = {}
        for row in rows:
            got = reported[row.id] = row.snap.offset
            if got == self.reported.get(row.id, 0):
                continue
            out.append(
                Event(
                    task_id=row.id,
                    session=row.session,
                    kind="progress",
                    state=TaskState.RUNNING,
                    detail=row.snap.detail,
                    bytes_received=got,
                    bytes_expected=row.snap.total,
                    error=None,
                    metadata=row.metadata,
                ).to_json()
            )
        self.reported = reported  # tasks that stopped running are forgotten
        return out
