"""Pieces of the daemon's event stream and task queries: parsing filters, shaping lines."""

from __future__ import annotations

import json
from typing import Any

from bgtransfer._engine._engine import Engine
from bgtransfer._exceptions import InvalidTransition, TaskNotFound
from bgtransfer._models import Event, Phase
from bgtransfer._requests import KINDS, kinds_of, phases_of
from bgtransfer._store._base import StoredEvent
from bgtransfer._tasks import row_to_wire

__all__ = ["KINDS", "REPLAY_LIMIT", "EventLines", "acknowledge", "kinds_of", "phases_of"]

REPLAY_LIMIT = 100_000  # state events per connection; a reconnect continues from the cursor
META_CACHE = 10_000  # tasks whose metadata a stream remembers


def acknowledge(engine: Engine, task_id: str) -> None:
    """Acknowledge a completion; refused for a task that has not finished, whose
    completion would otherwise never be delivered."""
    row = engine.get(task_id)
    if row.snap.phase is not Phase.DONE or not engine.store.acknowledge(task_id):
        raise InvalidTransition(
            f"task {task_id} has not finished: only a completion can be acknowledged "
            "(acknowledge it when completions() or events() delivers it)"
        )


class EventLines:
    """NDJSON lines for one subscriber; each carries its task's metadata (read once per
    task), and with ``with_task`` the whole task (completions)."""

    def __init__(self, engine: Engine, *, with_task: bool) -> None:
        self.engine = engine
        self.with_task = with_task
        self._meta: dict[str, dict[str, Any] | None] = {}

    def _extra(self, task_id: str, out: dict[str, Any]) -> bytes:
        if len(self._meta) >= META_CACHE:  # a stream may live for months: stay bounded
            self._meta.clear()
        if self.with_task or task_id not in self._meta:
            try:
                row = self.engine.get(task_id)
            except TaskNotFound:  # forgotten meanwhile
                row = None
            self._meta[task_id] = None if row is None else row.metadata
            if self.with_task and row is not None:
                out["task"] = row_to_wire(row)
        out["metadata"] = self._meta[task_id]
        return json.dumps(out).encode() + b"\n"

    def stored(self, ev: StoredEvent) -> bytes:
        return self.live(ev.to_event())

    def live(self, ev: Event) -> bytes:
        return self._extra(ev.task_id, ev.to_json())
