"""Forgetting finished tasks (``bgtransfer rm``, ``prune``, ``Task.remove()``).

The store must not grow forever, but only a finished task may go: its outcome is committed,
its file (if any) is in place and stays there. Used by the daemon and by foreground
sessions, with their engine.
"""

from __future__ import annotations

from bgtransfer._engine._engine import Engine
from bgtransfer._exceptions import InvalidTransition
from bgtransfer._models import PHASE_STATE, Phase

__all__ = ["prune", "remove"]


async def remove(engine: Engine, task_id: str) -> None:
    """Forget one finished task; InvalidTransition if it has not finished, TaskNotFound
    if there is no such task."""
    row = engine.get(task_id)
    if row.snap.phase is not Phase.DONE:
        state = PHASE_STATE[row.snap.phase].value
        raise InvalidTransition(
            f"cannot remove task {task_id} while it is {state}: cancel it first, or wait "
            "until it completes",
            task_id=task_id,
        )
    await engine.wait(task_id)  # its completion is committed before it is forgotten
    engine.store.remove([task_id])


def prune(engine: Engine, *, before: float | None, session: str | None) -> list[str]:
    """Forget every finished task (that finished before ``before``); returns their ids."""
    busy = set(engine._live)  # finished but their completion not yet committed: kept
    ids = [i for i in engine.store.finished_ids(before=before, session=session) if i not in busy]
    return engine.store.remove(ids)
