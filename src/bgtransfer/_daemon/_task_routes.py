"""Control-protocol routes for tasks: submit, list, read, control, forget, wait, history.

Every task a submit creates is built by ``_tasks.build_row`` or ``build_upload_row`` (the
library's one builder of each kind) from the body's fields; this module only checks the
body's shape and finds an earlier submit with the same idempotency key.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from bgtransfer._daemon._context import Parts
from bgtransfer._daemon._stream import acknowledge, phases_of
from bgtransfer._daemon._wire import json_body, query_int, query_number
from bgtransfer._engine import _forget as forget
from bgtransfer._engine._sidecar_io import refuse_in_use
from bgtransfer._exceptions import InvalidRequest, StoreFull, TaskNotFound
from bgtransfer._models import Phase
from bgtransfer._redact import redact
from bgtransfer._requests import (
    BATCH_LIMIT,
    Submitted,
    build_item,
    prune_args,
    wait_also,
    wait_ids,
    wait_timeout,
)
from bgtransfer._store._base import DuplicateKey, TaskRow
from bgtransfer._tasks import row_to_wire

__all__ = ["TaskRoutes"]

# The request semantics are shared with the fleet-mode client (``bgtransfer._requests``).
_Submitted = Submitted
# A waiter is woken by its task's committed completion and re-reads its tasks on its own
# only this often: a safety net (a completion whose commit failed), not the way waiters
# learn of completions. Only finished tasks can be forgotten, and those answer at once.
_RECHECK = 60.0


class _StillStoring(Exception):
    """The key's earlier submit is queued for the group commit: wait for ``fut``."""

    def __init__(self, fut: asyncio.Future[None]) -> None:
        super().__init__("still being stored")
        self.fut = fut


class TaskRoutes:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.engine = parts.engine
        self.store = parts.store
        # Submits whose insert is queued for the group commit, by (session, key): a twin
        # that arrives meanwhile answers with their task once it is stored.
        self._storing: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._waiters: dict[str, list[asyncio.Future[TaskRow]]] = {}

    def _wire(self, task_id: str) -> dict[str, Any]:
        return row_to_wire(self.engine.get(task_id))

    def _wire_new(self, row: TaskRow) -> dict[str, Any]:
        """A task just stored: as it was inserted unless the engine has started it (no
        read of the store for what this request has just written)."""
        return self._wire(row.id) if row.id in self.engine.scheduler.live else row_to_wire(row)

    def build(
        self, body: object, batch: dict[str, TaskRow] | None = None
    ) -> TaskRow | str | asyncio.Future[None]:
        """A validated new row for one submit item, or the id of its earlier twin (same
        idempotency key in the same session, submitted before or earlier in ``batch``),
        or the commit to wait for when that twin is still being stored."""

        def find_key(session: str, key: str) -> TaskRow | None:
            storing = self._storing.get((session, key))
            if storing is not None:
                raise _StillStoring(storing)
            return self.store.find_key(session, key)

        try:
            return build_item(find_key, body, batch)
        except _StillStoring as still:
            return still.fut

    async def _built(self, body: object, batch: dict[str, TaskRow] | None = None) -> TaskRow | str:
        """``build``, after waiting for a twin still being stored (then it is found stored,
        or, if its insert failed, this item is built anew)."""
        for _ in range(3):
            built = self.build(body, batch)
            if not isinstance(built, asyncio.Future):
                return built
            await asyncio.wait([built])
        raise InvalidRequest("this idempotency key is being submitted again and again: retry")

    async def _store_new(self, rows: list[TaskRow]) -> None:
        """Insert new tasks in the engine's next group commit and answer once it landed
        ("download() returns once the task is stored"), then start what has room.

        The commit runs in the committer's thread: the loop goes on serving other
        requests and transfers meanwhile, and submits that arrive together (from one
        client or many) share one transaction and one WAL fsync.
        """
        engine = self.engine
        committer = engine.space.committer
        assert committer is not None, "the engine has not started"
        for row in rows:
            row.owner = engine.owner.token
        engine.space.check()
        refuse_in_use(self.store, rows)  # adopt: not a partial file a live task writes
        keys = [(r.session, r.idempotency_key) for r in rows if r.idempotency_key is not None]
        fut = committer.insert(rows)
        for k in keys:
            self._storing[k] = fut

        def stored(f: asyncio.Future[None]) -> None:
            # A callback, not code after the await: the task starts even if the client
            # has gone away meanwhile.
            for k in keys:
                self._storing.pop(k, None)
            err = None if f.cancelled() else f.exception()
            if isinstance(err, StoreFull):
                engine.space.full(err.message)
            elif err is None:
                engine.scheduler.remember(rows)  # started without reading them back
                engine.space.pump()

        fut.add_done_callback(stored)
        await asyncio.shield(fut)

    async def _submit_many(self, items: object) -> web.Response:
        if not isinstance(items, list) or not 1 <= len(items) <= BATCH_LIMIT:
            raise InvalidRequest("tasks must be a list of 1 to 10000 task objects")
        batch: dict[str, TaskRow] = {}
        built = [await self._built(item, batch) for item in items]  # all validated first
        new = list({b.id: b for b in built if isinstance(b, TaskRow)}.values())
        if new:
            await self._store_new(new)
        return web.json_response(
            {"tasks": [self._wire(b) if isinstance(b, str) else self._wire_new(b) for b in built]},
            status=201,
        )

    async def submit(self, request: web.Request) -> web.Response:
        """One task (an object), or many at once (``{"tasks": [...]}``, one transaction).

        Two clients racing with one key get one task: the key is looked up among the
        submits still being stored as well as in the store.
        """
        body = await json_body(request)
        try:
            return await self._submit(body)
        except DuplicateKey:
            # A batch waited for one twin while another client stored a key it holds:
            # built again, the batch finds that task (the same answer as a repeat).
            return await self._submit(body)

    async def _submit(self, body: object) -> web.Response:
        if isinstance(body, dict) and set(body) == {"tasks"}:
            return await self._submit_many(body["tasks"])
        built = await self._built(body)
        if isinstance(built, str):
            return web.json_response(self._wire(built))
        await self._store_new([built])
        return web.json_response(self._wire_new(built), status=201)

    def _rows(self, request: web.Request) -> list[TaskRow]:
        q = request.query
        session = q.get("session")
        prefix = q.get("prefix")
        if q.get("key") is not None and session is not None:
            twin = self.store.find_key(session, q["key"])
            return [] if twin is None else [twin]
        if prefix is not None:
            return [
                r for r in self.store.find_prefix(prefix.lower()) if session in (None, r.session)
            ]
        if {"state", "since", "after"} & set(q):
            return self.store.page(
                session,
                phases=phases_of(q.getall("state", [])),
                since=None if q.get("since") is None else query_number(request, "since", 0.0),
                after=q.get("after"),
                limit=query_int(request, "limit", -1),
            )
        limit, offset = query_int(request, "limit", -1), query_int(request, "offset", 0)
        if limit < -1 or offset < 0:
            raise InvalidRequest("limit and offset must not be negative")
        return self.store.list(session, limit=limit, offset=offset)

    async def list_tasks(self, request: web.Request) -> web.Response:
        """All tasks, a page (``limit``, ``offset``), or the ids starting with ``prefix``."""
        return web.json_response([self._wire(r.id) for r in self._rows(request)])

    async def get_task(self, request: web.Request) -> web.Response:
        return web.json_response(self._wire(request.match_info["id"]))

    async def control(self, request: web.Request) -> web.Response:
        task_id, verb = request.match_info["id"], request.match_info["verb"]
        if verb == "suspend":
            await self.engine.suspend(task_id)
        elif verb == "resume":
            await self.engine.resume(task_id)
        elif verb == "cancel":
            await self.engine.cancel(task_id)
        elif verb == "ack":
            acknowledge(self.engine, task_id)
        else:
            raise web.HTTPNotFound(text=f"unknown action {verb!r}")
        return web.json_response(self._wire(task_id))

    async def remove(self, request: web.Request) -> web.Response:
        """Forget a finished task (409 invalid_transition while it runs); its file stays."""
        task_id = request.match_info["id"]
        await forget.remove(self.engine, task_id)
        return web.json_response({"removed": [task_id]})

    async def prune(self, request: web.Request) -> web.Response:
        """``{"older_than": S | null, "session": S | null}``: forget every finished task
        that finished at least S seconds ago (of that session)."""
        before, session = prune_args(await json_body(request))
        removed = forget.prune(self.engine, before=before, session=session)
        return web.json_response({"removed": removed})

    async def attempts(self, request: web.Request) -> web.Response:
        history = self.engine.attempts(request.match_info["id"])
        for a in history:
            a["url"], a["outcome"] = redact(a["url"] or ""), redact(a["outcome"] or "")
        return web.json_response(history)

    async def wait_many(self, request: web.Request) -> web.Response:
        """``{"ids": [...], "timeout": S}``: answer once every task is completed (committed)
        or S seconds passed, with all their rows: one long poll for a whole batch.

        ``"also": [...]``: other tasks the client has not seen finish; the answer's
        ``done`` lists those whose completion is committed, so that its ``wait()`` on
        them needs no round trip (the plain loop: download() each, then wait() each)."""
        body = await json_body(request)
        (ids, timeout), also = wait_ids(body), wait_also(body)
        done = self._done_many(ids)
        left = {i for i, row in done.items() if row is None}
        if left:
            await self.parts.wait_or_stop(self._finishing(left, done), timeout)
        answer: dict[str, Any] = {
            "tasks": [row_to_wire(done[i] or self.engine.get(i)) for i in ids]
        }
        if also:  # read after the wait: whatever finished meanwhile is reported too
            answer["done"] = [row_to_wire(r) for r in self.store.done_rows(also)]
        return web.json_response(answer)

    def _done(self, task_id: str) -> TaskRow | None:
        """The task if its completion is committed (the store's word: the engine's memory
        says done a moment before its commit lands), else None."""
        row = self.store.get(task_id)
        if row is None:
            raise TaskNotFound(f"no task with id {task_id!r}", task_id=task_id)
        return row if row.snap.phase is Phase.DONE else None

    def _done_many(self, ids: list[str]) -> dict[str, TaskRow | None]:
        """``_done`` of each id (unknown ids: 404 now), in two queries: only the finished
        rows are decoded (a batch waited for at once is mostly still queued)."""
        rows: dict[str, TaskRow | None] = {r.id: r for r in self.store.done_rows(ids)}
        known = self.store.known_ids([i for i in ids if i not in rows])
        for task_id in ids:
            if task_id not in rows and task_id not in known:
                raise TaskNotFound(f"no task with id {task_id!r}", task_id=task_id)
        return {i: rows.get(i) for i in ids}

    def finished(self, row: TaskRow) -> None:
        """A task's completion was committed: wake whoever waits for it, with its row."""
        for fut in self._waiters.pop(row.id, ()):
            if not fut.done():
                fut.set_result(row)

    async def _finishing(self, ids: set[str], done: dict[str, TaskRow | None]) -> None:
        """Until every task of ``ids`` has finished, its row put in ``done``: woken by each
        completion (pushed by the engine with the row, no poll), with a slow re-read of
        the store as a safety net."""
        loop = asyncio.get_running_loop()
        while ids:
            futs: dict[str, asyncio.Future[TaskRow]] = {i: loop.create_future() for i in ids}
            for i, fut in futs.items():
                self._waiters.setdefault(i, []).append(fut)
            try:
                await asyncio.wait(futs.values(), timeout=_RECHECK)
            finally:
                for i, fut in futs.items():
                    waiting = self._waiters.get(i)
                    if waiting is not None and fut in waiting:
                        waiting.remove(fut)
                        if not waiting:
                            del self._waiters[i]
            for i, fut in futs.items():
                done[i] = fut.result() if fut.done() else self._done(i)
            ids = {i for i in ids if done[i] is None}

    async def wait(self, request: web.Request) -> web.Response:
        task_id = request.match_info["id"]
        timeout = wait_timeout(query_number(request, "timeout", 30.0))
        done = {task_id: self._done(task_id)}
        if done[task_id] is None:  # a finished task is answered at once
            await self.parts.wait_or_stop(self._finishing({task_id}, done), timeout)
        return web.json_response(row_to_wire(done[task_id] or self.engine.get(task_id)))

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/tasks", self.submit)
        app.router.add_get("/v1/tasks", self.list_tasks)
        app.router.add_get("/v1/tasks/{id}", self.get_task)
        app.router.add_delete("/v1/tasks/{id}", self.remove)
        app.router.add_post("/v1/prune", self.prune)
        app.router.add_get("/v1/tasks/{id}/wait", self.wait)
        app.router.add_post("/v1/wait", self.wait_many)
        app.router.add_get("/v1/tasks/{id}/attempts", self.attempts)
        app.router.add_post("/v1/tasks/{id}/{verb}", self.control)
