"""Control-protocol routes for tasks: submit, list, read, control, forget, wait, history.

Every task a submit creates is built by ``_tasks.build_row`` or ``build_upload_row`` (the
library's one builder of each kind) from the body's fields; this module only checks the
body's shape and finds an earlier submit with the same idempotency key.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from bgtransfer._daemon._context import Parts
from bgtransfer._daemon._stream import acknowledge, phases_of
from bgtransfer._daemon._wire import json_body, query_int, query_number
from bgtransfer._engine import _forget as forget
from bgtransfer._exceptions import InvalidRequest
from bgtransfer._redact import redact
from bgtransfer._requests import BATCH_LIMIT, Submitted, build_item
from bgtransfer._store._base import TaskRow
from bgtransfer._tasks import row_to_wire

__all__ = ["TaskRoutes"]

# The request semantics are shared with the fleet-mode client (``bgtransfer._requests``).
_Submitted = Submitted


class TaskRoutes:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.engine = parts.engine
        self.store = parts.store

    def _wire(self, task_id: str) -> dict[str, Any]:
        return row_to_wire(self.engine.get(task_id))

    def build(self, body: object, batch: dict[str, TaskRow] | None = None) -> TaskRow | str:
        """A validated new row for one submit item, or the id of its earlier twin (same
        idempotency key in the same session, submitted before or earlier in ``batch``)."""
        return build_item(self.store.find_key, body, batch)

    def _submit_many(self, items: object) -> web.Response:
        if not isinstance(items, list) or not 1 <= len(items) <= BATCH_LIMIT:
            raise InvalidRequest("tasks must be a list of 1 to 10000 task objects")
        batch: dict[str, TaskRow] = {}
        built = [self.build(item, batch) for item in items]  # all validated first
        new = list({b.id: b for b in built if isinstance(b, TaskRow)}.values())
        if new:
            self.engine.submit_many(new)
        ids = [b if isinstance(b, str) else b.id for b in built]
        return web.json_response({"tasks": [self._wire(i) for i in ids]}, status=201)

    async def submit(self, request: web.Request) -> web.Response:
        """One task (an object), or many at once (``{"tasks": [...]}``, one transaction).

        No await between the key lookup and the insert: submits are serialised by the
        event loop, so two clients racing with one key get one task.
        """
        body = await json_body(request)
        if isinstance(body, dict) and set(body) == {"tasks"}:
            return self._submit_many(body["tasks"])
        built = self.build(body)
        if isinstance(built, str):
            return web.json_response(self._wire(built))
        self.engine.submit(built)
        return web.json_response(self._wire(built.id), status=201)

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
        body = await request.json()
        if not isinstance(body, dict) or set(body) - {"older_than", "session"}:
            raise InvalidRequest('prune takes {"older_than": seconds, "session": name}')
        older, session = body.get("older_than"), body.get("session")
        if older is not None and (
            not isinstance(older, int | float) or isinstance(older, bool) or older < 0
        ):
            raise InvalidRequest(f"older_than must be a number of seconds >= 0: {older!r}")
        if session is not None and not isinstance(session, str):
            raise InvalidRequest(f"session must be a string: {session!r}")
        before = None if older is None else time.time() - older
        removed = forget.prune(self.engine, before=before, session=session)
        return web.json_response({"removed": removed})

    async def attempts(self, request: web.Request) -> web.Response:
        history = self.engine.attempts(request.match_info["id"])
        for a in history:
            a["url"], a["outcome"] = redact(a["url"] or ""), redact(a["outcome"] or "")
        return web.json_response(history)

    async def wait_many(self, request: web.Request) -> web.Response:
        """``{"ids": [...], "timeout": S}``: answer once every task is completed (committed)
        or S seconds passed, with all their rows: one long poll for a whole batch."""
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("ids"), list):
            raise InvalidRequest('wait needs {"ids": [...], "timeout": seconds}')
        ids = body["ids"]
        if not 1 <= len(ids) <= BATCH_LIMIT or not all(isinstance(i, str) for i in ids):
            raise InvalidRequest("ids must be a list of 1 to 10000 task ids")
        timeout = body.get("timeout", 30)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool):
            raise InvalidRequest(f"timeout must be a number of seconds: {timeout!r}")
        if not 0 <= timeout <= 300:
            raise InvalidRequest(f"timeout must be between 0 and 300 seconds: {timeout}")
        for task_id in ids:
            self.engine.get(task_id)  # unknown ids: 404 now, not after the wait

        async def every() -> None:
            for task_id in ids:
                await self.engine.wait(task_id)

        await self.parts.wait_or_stop(every(), timeout)
        return web.json_response({"tasks": [self._wire(i) for i in ids]})

    async def wait(self, request: web.Request) -> web.Response:
        task_id = request.match_info["id"]
        timeout = query_number(request, "timeout", 30.0)
        if not 0 <= timeout <= 300:
            raise InvalidRequest(f"timeout must be between 0 and 300 seconds: {timeout}")
        self.engine.get(task_id)
        await self.parts.wait_or_stop(self.engine.wait(task_id), timeout)
        return web.json_response(self._wire(task_id))

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
