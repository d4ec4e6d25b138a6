"""The foreground backend: the engine runs in this process (``background=False``)."""

from __future__ import annotations

import builtins
import dataclasses
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from bgtransfer._exceptions import InvalidTransition, TaskNotFound, TransferError
from bgtransfer._home import HOME_STORE
from bgtransfer._models import Event, Phase, TaskState
from bgtransfer._session._known import Tracked
from bgtransfer._session._views import Backend, Query
from bgtransfer._store._base import DuplicateKey, Store, TaskRow
from bgtransfer._tasks import same_request

if TYPE_CHECKING:
    # Imported when a foreground session opens: a client of the daemon never needs the
    # engine (or aiohttp), and starts faster without them.
    from bgtransfer._engine._engine import Engine

__all__ = ["STORE_NAME", "Local", "submit_with_hook"]

STORE_NAME = HOME_STORE
REPLAY_LIMIT = 100_000  # state events a stream replays at most before it goes live


class Local:
    """Foreground: the engine runs in this process."""

    def __init__(self, home: str, max_active: int, max_per_host: int, identifier: str) -> None:
        self.home, self.identifier = home, identifier
        self._max = (max_active, max_per_host)
        self.engine: Engine | None = None
        self.store: Store | None = None

    def _engine(self) -> Engine:
        if self.engine is None:
            raise TransferError("the session is not open (use 'async with' or await open())")
        return self.engine

    async def open(self) -> None:
        from bgtransfer._engine._engine import Engine
        from bgtransfer._store._sqlite import SQLiteStore

        self.store = SQLiteStore(os.path.join(self.home, STORE_NAME))
        engine = Engine(self.store, self.home, max_active=self._max[0], max_per_host=self._max[1])
        await engine.start()
        engine.recover(self.identifier)
        await engine.flush()
        self.engine = engine

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.close()
            self.engine = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def _twin(self, row: TaskRow) -> TaskRow | None:
        """The task submitted earlier with ``row``'s idempotency key, if any; otherwise the
        target check the client skipped for a keyed submit is made now."""
        engine = self._engine()
        if row.idempotency_key is not None:
            existing = engine.store.find_key(row.session, row.idempotency_key)
            if existing is not None:
                same_request(existing, row)
                return engine.get(existing.id)
        if row.spec.kind == "download":
            from bgtransfer._engine._files import check_target

            check_target(row.path, overwrite=row.overwrite)
        return None

    def set_refresh_hook(self, task_id: str, hook: Callable[[Any], Any]) -> None:
        """A foreground task's refresh callable (issue 17): held by the engine, not stored."""
        self._engine().refresh_hooks[task_id] = hook

    async def submit(self, row: TaskRow) -> TaskRow:
        twin = self._twin(row)
        if twin is not None:
            return twin
        try:
            self._engine().submit(row)
        except DuplicateKey:  # another process won the race for this key
            twin = self._twin(row)
            if twin is None:
                raise
            return twin
        return row

    async def submit_many(self, rows: builtins.list[TaskRow]) -> builtins.list[TaskRow]:
        if any(r.idempotency_key is not None for r in rows):
            return [await self.submit(r) for r in rows]
        self._engine().submit_many(rows)
        return rows

    async def get(self, task_id: str) -> TaskRow:
        return self._engine().get(task_id)

    async def find_key(self, session: str, key: str) -> TaskRow | None:
        found = self._engine().store.find_key(session, key)
        return None if found is None else self._engine().get(found.id)

    def peek(self, row: TaskRow) -> TaskRow:
        return self._engine().get(row.id)

    async def list(self, session: str, query: Query | None = None) -> list[TaskRow]:
        engine = self._engine()
        if query is None:
            rows = engine.store.list(session)
        else:
            rows = engine.store.page(
                session,
                phases=query.phases(),
                since=query.since,
                after=query.after,
                limit=query.limit,
            )
        return [engine.get(r.id) for r in rows]

    async def control(self, task_id: str, verb: str) -> TaskRow:
        engine = self._engine()
        if verb == "ack":
            if engine.get(task_id).snap.phase is not Phase.DONE or not engine.store.acknowledge(
                task_id
            ):
                raise InvalidTransition(
                    f"task {task_id} has not finished: only a completion can be acknowledged"
                )
        else:
            await getattr(engine, verb)(task_id)
        return engine.get(task_id)

    def track(self, task: Tracked) -> None:
        """Nothing to track: this process's engine answers ``wait()`` from memory."""

    async def wait(self, task_id: str) -> TaskRow:
        return await self._engine().wait(task_id)

    async def wait_many(self, ids: builtins.list[str]) -> builtins.list[TaskRow]:
        engine = self._engine()
        return [await engine.wait(i) for i in ids]

    async def history(self, task_id: str) -> builtins.list[dict[str, Any]]:
        return self._engine().attempts(task_id)

    async def remove(self, task_id: str) -> None:
        from bgtransfer._engine import _forget

        await _forget.remove(self._engine(), task_id)

    def _with_meta(self, ev: Event, cache: dict[str, dict[str, Any] | None]) -> Event:
        if len(cache) >= 10_000:  # bounded, as the daemon's streams are
            cache.clear()
        if ev.task_id not in cache:
            try:
                cache[ev.task_id] = self._engine().get(ev.task_id).metadata
            except TaskNotFound:
                cache[ev.task_id] = None
        return dataclasses.replace(ev, metadata=cache[ev.task_id])

    async def events(
        self, session: str, since: int | None, kinds: frozenset[str]
    ) -> AsyncIterator[Event | int]:
        """The same stream as the daemon's: replay, the cursor where it ended, then live."""
        engine = self._engine()
        q = engine.subscribe()
        meta: dict[str, dict[str, Any] | None] = {}
        try:
            last = engine.store.last_cursor()
            if since is None:
                replay = engine.store.unacknowledged_completions(session)
            else:
                replay = engine.store.events_since(session, since, limit=REPLAY_LIMIT)
                if len(replay) == REPLAY_LIMIT:
                    last = replay[-1].cursor
            for ev in replay:
                last = max(last, ev.cursor)
                if "state" in kinds:
                    yield self._with_meta(ev.to_event(), meta)
            yield last
            while True:
                ev2 = await q.get()
                if ev2.session != session or (ev2.cursor is not None and ev2.cursor <= last):
                    continue
                if ev2.cursor is not None:
                    last = ev2.cursor
                if ev2.kind in kinds:
                    yield self._with_meta(ev2, meta)
        finally:
            engine.unsubscribe(q)

    async def completions(self, session: str) -> AsyncIterator[TaskRow | None]:
        engine = self._engine()
        q = engine.subscribe()
        try:
            last = engine.store.last_cursor()
            for ev in engine.store.unacknowledged_completions(session):
                last = max(last, ev.cursor)
                yield engine.get(ev.task_id)
            yield None
            while True:
                ev2 = await q.get()
                if ev2.session != session or ev2.cursor is None or ev2.cursor <= last:
                    continue
                last = ev2.cursor
                if ev2.kind == "state" and ev2.state is TaskState.COMPLETED:
                    yield engine.get(ev2.task_id)
        finally:
            engine.unsubscribe(q)


async def submit_with_hook(
    backend: Backend, row: TaskRow, hook: Callable[[Any], Any] | None
) -> TaskRow:
    """Submit ``row``; a foreground refresh callable is held by the engine first."""
    if hook is not None and isinstance(backend, Local):
        backend.set_refresh_hook(row.id, hook)  # before it can run
    submitted = await backend.submit(row)
    if hook is not None and isinstance(backend, Local) and submitted.id != row.id:
        backend.set_refresh_hook(submitted.id, hook)  # the key's earlier task
    return submitted
