"""The background backend: the home's daemon runs the tasks; this talks to it (starting it
on demand) over its control socket. In fleet mode (a PostgreSQL store) the same protocol is
answered straight from the store, and the fleet's workers run the tasks."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from bgtransfer._clients import open_client
from bgtransfer._home import StoreChoice
from bgtransfer._models import Event, Phase
from bgtransfer._session._known import Tracked, Unfinished
from bgtransfer._session._views import KINDS, Query
from bgtransfer._store._base import TaskRow
from bgtransfer._tasks import body_of, row_from_wire

__all__ = ["Remote"]

WAIT_BATCH = 5000  # ids per long poll (the daemon takes up to 10 000 and 1 MiB per request)


class Remote:
    """Background: the home's daemon runs the tasks; this talks to it (starting it). With
    a PostgreSQL ``store``, the store is the queue and a fleet's workers run them."""

    def __init__(self, home: str, store: StoreChoice | None = None) -> None:
        self.client = open_client(home, store, keep_alive=True)
        self.unfinished = Unfinished()  # see _known: wait() on a task seen finished

    async def open(self) -> None:
        await self.client.ensure_running()

    async def close(self) -> None:
        await self.client.close()

    async def submit_many(self, rows: builtins.list[TaskRow]) -> builtins.list[TaskRow]:
        out: builtins.list[TaskRow] = []
        for start in range(0, len(rows), 1000):  # stays well under the 1 MiB body cap
            items = [body_of(r).to_json() for r in rows[start : start + 1000]]
            data = await self.client.call("POST", "/v1/tasks", body={"tasks": items})
            out.extend(row_from_wire(d) for d in data["tasks"])
        return out

    async def submit(self, row: TaskRow) -> TaskRow:
        body = body_of(row).to_json()
        return row_from_wire(await self.client.call("POST", "/v1/tasks", body=body))

    async def get(self, task_id: str) -> TaskRow:
        return row_from_wire(await self.client.call("GET", f"/v1/tasks/{quote(task_id)}"))

    async def find_key(self, session: str, key: str) -> TaskRow | None:
        data = await self.client.call("GET", "/v1/tasks", params={"session": session, "key": key})
        return row_from_wire(data[0]) if data else None

    def peek(self, row: TaskRow) -> TaskRow:
        return row

    async def history(self, task_id: str) -> list[dict[str, Any]]:
        data = await self.client.call("GET", f"/v1/tasks/{quote(task_id)}/attempts")
        return list(data)

    async def remove(self, task_id: str) -> None:
        await self.client.call("DELETE", f"/v1/tasks/{quote(task_id)}")

    async def list(self, session: str, query: Query | None = None) -> list[TaskRow]:
        params = {"session": session}
        if query is not None:
            params["state"] = ",".join(query.states)
            params["limit"] = str(query.limit)
            if query.since is not None:
                params["since"] = repr(query.since)
            if query.after is not None:
                params["after"] = query.after
        data = await self.client.call("GET", "/v1/tasks", params=params)
        return [row_from_wire(d) for d in data]

    async def control(self, task_id: str, verb: str) -> TaskRow:
        return row_from_wire(await self.client.call("POST", f"/v1/tasks/{quote(task_id)}/{verb}"))

    def track(self, task: Tracked) -> None:
        self.unfinished.add(task)

    async def wait(self, task_id: str) -> TaskRow:
        followed: int | None = None  # a stop of this daemon ends the wait (DaemonStopped)
        while True:
            also = self.unfinished.others(task_id)
            if also:  # and hear which of the session's other tasks have finished
                answer = await self.client.call(
                    "POST",
                    "/v1/wait",
                    body={"ids": [task_id], "timeout": 25, "also": also},
                    timeout=40,
                    waiter=True,
                    followed=followed,
                )
                row = row_from_wire(answer["tasks"][0])
                # A daemon (or fleet client) without ``also`` leaves ``done`` out.
                self.unfinished.learn([row_from_wire(d) for d in answer.get("done", ())])
            else:
                row = row_from_wire(
                    await self.client.call(
                        "GET",
                        f"/v1/tasks/{quote(task_id)}/wait",
                        params={"timeout": "25"},
                        timeout=40,
                        waiter=True,
                        followed=followed,
                    )
                )
            followed = self.client.peer_pid
            if row.snap.phase is Phase.DONE:
                self.unfinished.learn([row])
                return row

    async def wait_many(self, ids: builtins.list[str]) -> builtins.list[TaskRow]:
        done: dict[str, TaskRow] = {}
        for start in range(0, len(ids), WAIT_BATCH):
            pending = ids[start : start + WAIT_BATCH]
            followed: int | None = None
            while pending:
                answer = await self.client.call(
                    "POST",
                    "/v1/wait",
                    body={"ids": pending, "timeout": 25},
                    timeout=40,
                    waiter=True,
                    followed=followed,
                )
                followed = self.client.peer_pid
                rows = [row_from_wire(d) for d in answer["tasks"]]
                self.unfinished.learn(rows)
                done.update((r.id, r) for r in rows if r.snap.phase is Phase.DONE)
                pending = [r.id for r in rows if r.snap.phase is not Phase.DONE]
        return [done[i] for i in ids]

    async def completions(self, session: str) -> AsyncIterator[TaskRow | None]:
        async for d in self.client.events(session, None, completions=True):
            if d.get("kind") == "replay_end":
                yield None
            elif "task" in d:
                yield row_from_wire(d["task"])

    async def events(
        self, session: str, since: int | None, kinds: frozenset[str]
    ) -> AsyncIterator[Event | int]:
        wanted = None if kinds == KINDS else ",".join(sorted(kinds))
        async for d in self.client.events(session, since, kinds=wanted):
            if d.get("kind") == "replay_end":
                yield int(d["cursor"])
                continue
            yield Event.from_json(d)
