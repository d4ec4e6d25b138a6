"""What a background session knows of its unfinished tasks, so that ``wait()`` on a task
the daemon has already finished costs no round trip.

The loop a user writes first is ``tasks = [s.download(u, p) for u, p in pairs]``, then
``for t in tasks: t.wait()``. Each ``wait()`` that has to ask the daemon also names the
session's other unfinished tasks (``also``, at most ``LIMIT``, oldest first: the order such a
loop waits in); the daemon answers with the rows of those whose completion is committed,
and they are filled in here. The ``wait()`` calls on them that follow are answered from
memory: a finished task never changes, and a completion the daemon reports is committed,
the promise ``wait()`` makes anyway.

Only the task objects the application still holds are tracked (weak references): a
dropped task costs nothing.
"""

from __future__ import annotations

import builtins
import itertools
import weakref
from typing import Protocol

from bgtransfer._models import Phase
from bgtransfer._store._base import TaskRow

__all__ = ["LIMIT", "Tracked", "Unfinished"]

LIMIT = 1000  # ids named per wait (~40 KB of JSON; the daemon takes 10 000)


class Tracked(Protocol):
    """A task object whose row the session may fill in (``AsyncTask``)."""

    _row: TaskRow


class Unfinished:
    def __init__(self) -> None:
        self._tasks: weakref.WeakValueDictionary[str, Tracked] = weakref.WeakValueDictionary()

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, task: Tracked) -> None:
        row = task._row
        if row.snap.phase is not Phase.DONE:
            self._tasks[row.id] = task

    def others(self, task_id: str) -> builtins.list[str]:
        """Up to LIMIT tracked ids besides ``task_id``, oldest first."""
        ids = list(itertools.islice(self._tasks.keys(), LIMIT + 1))
        return [i for i in ids if i != task_id][:LIMIT]

    def learn(self, rows: builtins.list[TaskRow]) -> None:
        """Fill in the rows of tasks found finished; they are no longer tracked."""
        for row in rows:
            if row.snap.phase is Phase.DONE:
                task = self._tasks.pop(row.id, None)
                if task is not None:
                    task._row = row
