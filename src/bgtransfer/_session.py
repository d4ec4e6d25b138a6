"""Sessions and tasks: the public Python API (asyncio and sync)."""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import datetime
import os
import sqlite3
import threading
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote

import platformdirs
from multidict import CIMultiDict, CIMultiDictProxy

from bgtransfer._client import DaemonClient
from bgtransfer._exceptions import (
    InvalidRequest,
    InvalidTransition,
    TaskNotFound,
    TransferError,
    error_from_dict,
)
from bgtransfer._jobs_api import AsyncJob, Job, list_jobs, schedule_job
from bgtransfer._models import PHASE_STATE, Event, Phase, TaskState
from bgtransfer._protocol._machine import DEFAULT_LOW_SPEED_LIMIT, DEFAULT_LOW_SPEED_TIME
from bgtransfer._store._base import StoredEvent, TaskRow
from bgtransfer._tasks import (
    build_row,
    build_upload_row,
    row_from_wire,
    same_request,
    same_target,
    task_dict,
)
from bgtransfer._trust import prepare_home

if TYPE_CHECKING:
    # Imported when a foreground session opens: a client of the daemon never needs the
    # engine (or aiohttp), and starts faster without them.
    from bgtransfer._engine._engine import Engine
    from bgtransfer._store._sqlite import SQLiteStore

__all__ = ["AsyncSession", "AsyncTask", "EventStream", "Session", "Task", "resolve_home"]

T = TypeVar("T")
STORE_NAME = "bgtransfer.sqlite3"
DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_RESOURCE_TIMEOUT = 7 * 86400.0


def resolve_home(home: str | os.PathLike[str] | None = None) -> str:
    """The home directory: argument, else $BGTRANSFER_HOME, else the user state dir.

    Created 0700 if missing; raises :class:`UnsafeHome` if another user owns it or it is
    group- or world-writable (see "Security model" in the README).
    """
    chosen = (
        os.fspath(home)
        if home is not None
        else os.environ.get("BGTRANSFER_HOME") or platformdirs.user_state_dir("bgtransfer")
    )
    path = os.path.abspath(os.path.expanduser(chosen))
    prepare_home(path)
    return path


class _TaskView:
    """Fields shared by Task and AsyncTask, read from a TaskRow."""

    _row: TaskRow

    @property
    def id(self) -> str:
        return self._row.id

    @property
    def session(self) -> str:
        return self._row.session

    @property
    def url(self) -> str:
        return self._row.spec.url

    @property
    def path(self) -> str:
        return self._row.path

    def __repr__(self) -> str:
        r = self._row
        return (
            f"<{type(self).__name__} {r.id[:8]} {self.state.value} "
            f"{r.snap.offset}/{r.snap.total} {r.snap.detail!r}>"
        )

    # Each public field reads fresh through _fresh() (overridden per flavour).
    def _fresh(self) -> TaskRow:
        return self._row

    @property
    def state(self) -> TaskState:
        return PHASE_STATE[self._fresh().snap.phase]

    @property
    def detail(self) -> str:
        return self._fresh().snap.detail

    @property
    def kind(self) -> str:
        """ "download" or "upload"."""
        return self._row.spec.kind

    @property
    def bytes_received(self) -> int:
        r = self._fresh()
        return r.snap.offset if r.spec.kind == "download" else 0

    @property
    def bytes_sent(self) -> int:
        """Uploads: bytes the server confirmed (tus/IETF) or that were sent (plain)."""
        r = self._fresh()
        return r.snap.offset if r.spec.kind == "upload" else 0

    @property
    def response_body(self) -> bytes | None:
        """Uploads: the body of the server's final answer (at most 64 KiB)."""
        return self._fresh().snap.response_body

    @property
    def bytes_expected(self) -> int | None:
        return self._fresh().snap.total

    @property
    def status_code(self) -> int | None:
        return self._fresh().snap.status_code

    @property
    def error(self) -> TransferError | None:
        return self._fresh().snap.error

    @property
    def response_status(self) -> int | None:
        """Status of the response that began the file (200 even if later parts came as 206),
        or of the final error response."""
        return self._fresh().snap.response_status

    @property
    def response_headers(self) -> CIMultiDictProxy[str]:
        """Headers of that response: a case-insensitive mapping (``["Content-Type"]`` and
        ``["content-type"]`` are the same; ``getall(name)`` gives every value of a
        repeated header), read-only, like httpx's ``Response.headers``."""
        return CIMultiDictProxy(CIMultiDict(self._fresh().snap.response_headers))

    @property
    def response_reason(self) -> str | None:
        """The reason phrase the server sent with that response (None if none yet)."""
        return self._fresh().snap.response_reason

    @property
    def acknowledged(self) -> bool:
        return self._fresh().acknowledged

    @property
    def metadata(self) -> dict[str, Any] | None:
        """The JSON object given as ``metadata=`` when the task was submitted (a copy)."""
        meta = self._row.metadata
        return None if meta is None else dict(meta)

    @property
    def idempotency_key(self) -> str | None:
        """The key given as ``idempotency_key=``, else the one the library generated."""
        return self._row.idempotency_key

    @property
    def sha256(self) -> str | None:
        """The digest the download was submitted with (verified before the file appears)."""
        return self._row.spec.sha256

    @property
    def options(self) -> dict[str, Any]:
        """The submitted options, as stored: timeouts, retry policy, sha256, segments...
        (header values are not repeated here; ``headers`` names what was sent)."""
        spec = dataclasses.asdict(self._row.spec)
        spec["headers"] = [name for name, _ in self._row.spec.headers]
        spec["form_fields"] = [list(f) for f in self._row.spec.form_fields]
        spec["overwrite"] = self._row.overwrite
        spec["on_complete"] = None if self._row.on_complete is None else list(self._row.on_complete)
        return spec

    @property
    def restarts(self) -> int:
        return self._fresh().snap.restarts

    @property
    def attempts(self) -> int:
        return self._fresh().snap.attempts

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON shape used by the CLI and the control API."""
        return task_dict(self._fresh())


class _Backend(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def submit(self, row: TaskRow) -> TaskRow: ...
    async def submit_many(self, rows: builtins.list[TaskRow]) -> builtins.list[TaskRow]: ...
    async def get(self, task_id: str) -> TaskRow: ...
    async def find_key(self, session: str, key: str) -> TaskRow | None: ...
    def peek(self, row: TaskRow) -> TaskRow: ...
    async def list(self, session: str, query: _Query | None = None) -> list[TaskRow]: ...
    async def control(self, task_id: str, verb: str) -> TaskRow: ...
    async def wait(self, task_id: str) -> TaskRow: ...
    async def wait_many(self, ids: builtins.list[str]) -> builtins.list[TaskRow]: ...
    async def history(self, task_id: str) -> builtins.list[dict[str, Any]]: ...
    async def remove(self, task_id: str) -> None: ...
    def events(
        self, session: str, since: int | None, kinds: frozenset[str]
    ) -> AsyncIterator[Event | int]: ...
    def completions(self, session: str) -> AsyncIterator[TaskRow | None]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class _Query:
    """``tasks()`` filters: public state names, created at or after ``since``, a page of
    ``limit`` after the task ``after``."""

    states: tuple[str, ...] = ()
    since: float | None = None
    after: str | None = None
    limit: int = -1


KINDS = frozenset({"state", "progress"})
REPLAY_LIMIT = 100_000


class _Local:
    """Foreground: the engine runs in this process."""

    def __init__(self, home: str, max_active: int, max_per_host: int, identifier: str) -> None:
        self.home, self.identifier = home, identifier
        self._max = (max_active, max_per_host)
        self.engine: Engine | None = None
        self.store: SQLiteStore | None = None

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

    async def submit(self, row: TaskRow) -> TaskRow:
        twin = self._twin(row)
        if twin is not None:
            return twin
        try:
            self._engine().submit(row)
        except sqlite3.IntegrityError:  # another process won the race for this key
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

    async def list(self, session: str, query: _Query | None = None) -> list[TaskRow]:
        engine = self._engine()
        if query is None:
            rows = engine.store.list(session)
        else:
            from bgtransfer._daemon._stream import phases_of

            rows = engine.store.page(
                session,
                phases=phases_of(list(query.states)),
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
                    yield self._with_meta(_from_stored(ev), meta)
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


WAIT_BATCH = 5000  # ids per long poll (the daemon takes up to 10 000 and 1 MiB per request)


class _Remote:
    """Background: the home's daemon runs the tasks; this talks to it (starting it)."""

    def __init__(self, home: str) -> None:
        self.client = DaemonClient(home)

    async def open(self) -> None:
        await self.client.ensure_running()

    async def close(self) -> None:
        await self.client.close()

    async def submit_many(self, rows: builtins.list[TaskRow]) -> builtins.list[TaskRow]:
        out: builtins.list[TaskRow] = []
        for start in range(0, len(rows), 1000):  # stays well under the 1 MiB body cap
            items = [_download_body(r) for r in rows[start : start + 1000]]
            data = await self.client.call("POST", "/v1/tasks", body={"tasks": items})
            out.extend(row_from_wire(d) for d in data["tasks"])
        return out

    async def submit(self, row: TaskRow) -> TaskRow:
        if row.spec.kind == "upload":
            return row_from_wire(
                await self.client.call("POST", "/v1/tasks", body=_upload_body(row))
            )
        body = _download_body(row)
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

    async def list(self, session: str, query: _Query | None = None) -> list[TaskRow]:
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

    async def wait(self, task_id: str) -> TaskRow:
        followed: int | None = None  # a stop of this daemon ends the wait (DaemonStopped)
        while True:
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
            err = d.get("error")
            yield Event(
                task_id=d["task_id"],
                session=d["session"],
                kind=d["kind"],
                state=TaskState(d["state"]),
                detail=d["detail"],
                bytes_received=d["bytes_received"],
                bytes_expected=d["bytes_expected"],
                error=None if err is None else error_from_dict(err),
                cursor=d.get("cursor"),
                metadata=d.get("metadata"),
            )


def _download_body(row: TaskRow) -> dict[str, Any]:
    return {
        "session": row.session,
        "url": row.spec.url,
        "path": row.path,
        "idempotency_key": row.idempotency_key,
        "headers": [list(h) for h in row.spec.headers],
        "request_timeout": row.spec.request_timeout,
        "resource_timeout": row.spec.resource_timeout,
        "sha256": row.spec.sha256,
        "overwrite": row.overwrite,
        "low_speed_limit": row.spec.low_speed_limit,
        "low_speed_time": row.spec.low_speed_time,
        "max_attempts": row.spec.max_attempts,
        "retry_for": row.spec.retry_for,
        "retry_wait": row.spec.retry_wait,
        "max_retry_wait": row.spec.max_retry_wait,
        "on_complete": None if row.on_complete is None else list(row.on_complete),
        "segments": row.spec.segments,
        "max_bytes": row.spec.max_bytes,
        "metadata": row.metadata,
        "start_at": row.spec.start_at,
        "max_rate": row.spec.max_rate,
        "priority": row.spec.priority,
        # The finished file's mode follows the caller's umask, not the daemon's.
        "umask": row.spec.umask,
    }


def _upload_body(row: TaskRow) -> dict[str, Any]:
    spec = row.spec
    return {
        "kind": "upload",
        "session": row.session,
        "url": spec.url,
        "path": row.path,
        "idempotency_key": row.idempotency_key,
        "method": spec.method,
        "headers": [list(h) for h in spec.headers],
        "protocol": spec.protocol,
        "request_timeout": spec.request_timeout,
        "resource_timeout": spec.resource_timeout,
        "field_name": spec.field_name,
        "form_fields": [list(h) for h in spec.form_fields],
        "retry_unsafe": spec.retry_unsafe,
        "chunk_size": spec.chunk_size,
        "max_attempts": spec.max_attempts,
        "retry_for": spec.retry_for,
        "retry_wait": spec.retry_wait,
        "max_retry_wait": spec.max_retry_wait,
        "on_complete": None if row.on_complete is None else list(row.on_complete),
        "response_path": spec.response_path,
        "metadata": row.metadata,
        "start_at": spec.start_at,
        "max_rate": spec.max_rate,
        "priority": spec.priority,
    }


def _from_stored(ev: StoredEvent) -> Event:
    return Event(
        task_id=ev.task_id,
        session=ev.session,
        kind="state",
        state=TaskState(ev.state),
        detail=ev.detail,
        bytes_received=ev.bytes_received,
        bytes_expected=ev.bytes_expected,
        error=ev.error,
        cursor=ev.cursor,
    )


class EventStream:
    """What :meth:`AsyncSession.events` returns: an async iterator of :class:`Event`,
    which also knows where it is in the durable log of state events."""

    def __init__(self, source: AsyncIterator[Event | int], since: int | None) -> None:
        self._source = source
        self.cursor: int | None = since
        """Where a later ``events(since=...)`` continues this stream without a gap."""
        self.replay_cursor: int | None = None
        """The cursor at which the replay ended; None until it has."""

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while True:
            item = await anext(self._source)
            if isinstance(item, int):
                if self.replay_cursor is None:
                    self.replay_cursor = item
                self.cursor = item if self.cursor is None else max(self.cursor, item)
                continue
            if item.cursor is not None:
                self.cursor = item.cursor if self.cursor is None else max(self.cursor, item.cursor)
            return item

    async def aclose(self) -> None:
        await self._source.aclose()  # type: ignore[attr-defined]


def _query(state: object, since: object, limit: object, cursor: object) -> _Query | None:
    """Validated ``tasks()`` filters (typed ``object``: callers pass anything at runtime)."""
    if state is None and since is None and limit is None and cursor is None:
        return None
    states: builtins.list[str] = []
    if state is not None:
        if isinstance(state, TaskState | str) or not isinstance(state, Iterable):
            many: builtins.list[object] = [state]
        else:
            many = builtins.list(state)
        for one in many:
            name = one.value if isinstance(one, TaskState) else one
            if not isinstance(name, str) or name.lower() not in {s.value for s in TaskState}:
                names = ", ".join(s.value for s in TaskState)
                raise InvalidRequest(f"state must be a TaskState or one of {names}, not {one!r}")
            states.append(name.lower())
    when: float | None = None
    if isinstance(since, datetime.datetime):
        if since.tzinfo is None:
            raise InvalidRequest("since must be an aware datetime (with a tzinfo) or epoch seconds")
        when = since.timestamp()
    elif since is not None:
        if isinstance(since, bool) or not isinstance(since, int | float):
            raise InvalidRequest(f"since must be epoch seconds or a datetime, not {since!r}")
        when = float(since)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise InvalidRequest(f"limit must be a positive integer, not {limit!r}")
    if cursor is not None and (not isinstance(cursor, str) or not cursor):
        raise InvalidRequest(f"cursor must be a task id (the last of the page before): {cursor!r}")
    return _Query(tuple(states), when, cursor, -1 if limit is None else limit)


class AsyncTask(_TaskView):
    """A task seen from asyncio.

    Foreground tasks read fresh on every field access. Background tasks live in the daemon:
    their fields show the last answer from it; ``await task.refresh()`` asks again (every
    control call and ``wait()`` refresh too).
    """

    def __init__(self, session: AsyncSession, row: TaskRow) -> None:
        self._session = session
        self._row = row

    def _fresh(self) -> TaskRow:
        self._row = self._session._backend_or_raise().peek(self._row)
        return self._row

    async def refresh(self) -> AsyncTask:
        self._row = await self._session._backend_or_raise().get(self.id)
        return self

    async def _control(self, verb: str) -> None:
        self._row = await self._session._backend_or_raise().control(self.id, verb)

    async def suspend(self) -> None:
        await self._control("suspend")

    async def resume(self) -> None:
        await self._control("resume")

    async def cancel(self) -> None:
        await self._control("cancel")

    async def acknowledge(self) -> None:
        """Tell the session its completion was handled: it is never delivered again.

        Only a finished task can be acknowledged (InvalidTransition otherwise): an early
        acknowledgement would swallow the completion the app has yet to handle."""
        await self._control("ack")

    async def history(self) -> list[dict[str, Any]]:
        """Every request made for this task: url, range_start, status, bytes, outcome."""
        return await self._session._backend_or_raise().history(self.id)

    async def remove(self) -> None:
        """Forget this finished task: it leaves the store, ``tasks()`` and ``ls``; its file
        stays. Raises InvalidTransition while it has not finished (cancel it first)."""
        await self._session._backend_or_raise().remove(self.id)

    async def wait(self, timeout: float | None = None) -> AsyncTask:
        """Wait until COMPLETED; raises TimeoutError only if this wait timed out."""
        backend = self._session._backend_or_raise()
        async with asyncio.timeout(timeout):
            self._row = await backend.wait(self.id)
        return self


class AsyncSession:
    """A group of tasks named by ``identifier`` in one home.

    ``background=True`` hands tasks to the home's daemon (started on demand): they go on
    after this process exits. ``background=False`` runs them in this process; they stop with
    it and a later session resumes them.
    """

    def __init__(
        self,
        identifier: str,
        *,
        home: str | os.PathLike[str] | None = None,
        background: bool = True,
        max_active: int | None = None,
        max_per_host: int | None = None,
    ) -> None:
        if not isinstance(identifier, str) or not identifier.strip():  # type: ignore[redundant-expr]
            raise InvalidRequest(f"session identifier must be a non-empty string: {identifier!r}")
        for name, value in (("max_active", max_active), ("max_per_host", max_per_host)):
            if value is None:
                continue
            if type(value) is not int or value < 1:
                raise InvalidRequest(f"{name} must be a positive integer, not {value!r}")
            if background:
                # Background tasks of every session share one daemon and its limits; a
                # per-session number it would not honour is refused, not silently ignored.
                env = "BGTRANSFER_" + name.upper()
                raise InvalidRequest(
                    f"{name} limits a foreground session (background=False); background "
                    f"sessions share the daemon's limits: start the daemon with {env}={value} "
                    "in its environment (see `bgtransfer daemon status --json`)"
                )
        self.identifier = identifier
        self.background = background
        self.home = resolve_home(home)
        self._backend: _Backend | None = None
        self._max = (max_active or 16, max_per_host or 6)

    async def open(self) -> AsyncSession:
        if self._backend is None:
            backend: _Backend = (
                _Remote(self.home)
                if self.background
                else _Local(self.home, self._max[0], self._max[1], self.identifier)
            )
            await backend.open()
            self._backend = backend
        return self

    async def aclose(self) -> None:
        if self._backend is not None:
            await self._backend.close()
            self._backend = None

    async def __aenter__(self) -> AsyncSession:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _backend_or_raise(self) -> _Backend:
        if self._backend is None:
            raise TransferError("the session is not open (use 'async with' or await open())")
        return self._backend

    def _engine_or_raise(self) -> Engine:
        """The in-process engine of a foreground session (for tests and tools)."""
        backend = self._backend_or_raise()
        if not isinstance(backend, _Local):
            raise TransferError("a background session has no engine in this process")
        return backend._engine()

    async def download(
        self,
        url: str,
        path: str | os.PathLike[str],
        *,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        resource_timeout: float = DEFAULT_RESOURCE_TIMEOUT,
        sha256: str | None = None,
        overwrite: bool = False,
        low_speed_limit: int = DEFAULT_LOW_SPEED_LIMIT,
        low_speed_time: float = DEFAULT_LOW_SPEED_TIME,
        max_attempts: int | None = None,
        retry_for: float | None = None,
        retry_wait: float = 1.0,
        max_retry_wait: float = 120.0,
        on_complete: Sequence[str] | None = None,
        segments: int = 1,
        max_bytes: int | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        start_at: float | None = None,
        max_rate: int | str | None = None,
        priority: str = "normal",
    ) -> AsyncTask:
        """Start downloading ``url`` into ``path``; returns at once with a RUNNING task.

        ``segments=N`` (1-16) downloads over up to N connections at once when the server
        allows ranges of one fixed version (aria2c -s N); otherwise one connection is used.
        ``start_at`` (seconds since the epoch): no request before then. ``max_rate``: at
        most that many bytes per second (or curl's "4M"). ``priority``: "high", "normal" or
        "low"; queued work starts in that order.

        ``idempotency_key``: a second submit with the same key in this session returns the
        task of the first, whatever its state (even finished, with its file in place); the
        same key with a different url, path, sha256 or metadata is an InvalidRequest.
        ``metadata``: a JSON object of up to 16 KiB kept with the task (``task.metadata``,
        ``ls --json``, events).

        Bad input raises InvalidRequest here, before any task exists. When this returns,
        the task is committed to the store: it runs even if this process dies at once.
        """
        try:
            row = build_row(
                self.identifier,
                url,
                path,
                background=self.background,
                headers=headers,
                request_timeout=request_timeout,
                resource_timeout=resource_timeout,
                sha256=sha256,
                overwrite=overwrite,
                low_speed_limit=low_speed_limit,
                low_speed_time=low_speed_time,
                max_attempts=max_attempts,
                retry_for=retry_for,
                retry_wait=retry_wait,
                max_retry_wait=max_retry_wait,
                on_complete=on_complete,
                segments=segments,
                max_bytes=max_bytes,
                start_at=start_at,
                max_rate=max_rate,
                priority=priority,
                idempotency_key=uuid.uuid4().hex if idempotency_key is None else idempotency_key,
                metadata=metadata,
                check_exists=idempotency_key is None,
            )
        except InvalidRequest:
            twin = await self._twin(idempotency_key, "download", url, path)
            if twin is None:
                raise
            return twin
        row = await self._backend_or_raise().submit(row)
        return AsyncTask(self, row)

    async def _twin(
        self, key: str | None, kind: str, url: object, path: object
    ) -> AsyncTask | None:
        """The task of ``key`` when a repeated submit no longer validates only because its
        upload source or target directory is gone since: it asked for that task."""
        if not isinstance(key, str) or not key:
            return None
        found = await self._backend_or_raise().find_key(self.identifier, key)
        if found is None or not same_target(found, kind, url, path):
            return None
        return AsyncTask(self, found)

    async def download_many(self, items: Iterable[Mapping[str, Any]]) -> list[AsyncTask]:
        """Submit many downloads at once: each item has ``url``, ``path`` and any option of
        :meth:`download` (``idempotency_key`` and ``metadata`` included). All are validated
        first (InvalidRequest names the first bad one, and then none is created); they are
        stored in one transaction."""
        rows = []
        twins: dict[int, AsyncTask] = {}
        for n, item in enumerate(items):
            opts = dict(item)
            try:
                url, path = opts.pop("url"), opts.pop("path")
            except KeyError as exc:
                raise InvalidRequest(f"item {n} has no {exc.args[0]!r}") from None
            key = opts.pop("idempotency_key", None)
            try:
                rows.append(
                    build_row(
                        self.identifier,
                        url,
                        path,
                        background=self.background,
                        idempotency_key=uuid.uuid4().hex if key is None else key,
                        check_exists=key is None,
                        **opts,
                    )
                )
            except TypeError as exc:
                raise InvalidRequest(f"item {n}: {exc}") from None
            except InvalidRequest:
                twin = await self._twin(key, "download", url, path)
                if twin is None:
                    raise
                twins[n] = twin
        total = len(rows) + len(twins)
        if not total:
            return []
        done = iter(await self._backend_or_raise().submit_many(rows) if rows else [])
        return [twins[n] if n in twins else AsyncTask(self, next(done)) for n in range(total)]

    async def upload(
        self,
        path: str | os.PathLike[str],
        url: str,
        *,
        method: str = "PUT",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        protocol: str = "plain",
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        resource_timeout: float = DEFAULT_RESOURCE_TIMEOUT,
        field_name: str = "file",
        form_fields: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        retry_unsafe: bool = False,
        chunk_size: int = 8 << 20,
        max_attempts: int | None = None,
        retry_for: float | None = None,
        retry_wait: float = 1.0,
        max_retry_wait: float = 120.0,
        on_complete: Sequence[str] | None = None,
        response_path: str | os.PathLike[str] | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        start_at: float | None = None,
        max_rate: int | str | None = None,
        priority: str = "normal",
    ) -> AsyncTask:
        """Start uploading the file at ``path`` to ``url``; returns at once.

        ``idempotency_key`` and ``metadata`` as for :meth:`download`.

        ``protocol``: "plain" (one streamed request), "multipart" (a form POST), "tus"
        (tus 1.0) or "ietf" (draft-ietf-httpbis-resumable-upload-05); the last two resume
        from the server's offset after any interruption. ``response_path``: where the whole
        body of the server's final answer is written (in place before the task completes);
        ``Task.response_body`` keeps its first 64 KiB either way.
        """
        try:
            row = build_upload_row(
                self.identifier,
                path,
                url,
                background=self.background,
                method=method,
                headers=headers,
                protocol=protocol,
                request_timeout=request_timeout,
                resource_timeout=resource_timeout,
                field_name=field_name,
                form_fields=form_fields,
                retry_unsafe=retry_unsafe,
                chunk_size=chunk_size,
                max_attempts=max_attempts,
                retry_for=retry_for,
                retry_wait=retry_wait,
                max_retry_wait=max_retry_wait,
                on_complete=on_complete,
                start_at=start_at,
                max_rate=max_rate,
                priority=priority,
                idempotency_key=uuid.uuid4().hex if idempotency_key is None else idempotency_key,
                metadata=metadata,
                response_path=response_path,
            )
        except InvalidRequest:
            twin = await self._twin(idempotency_key, "upload", url, path)
            if twin is None:
                raise
            return twin
        row = await self._backend_or_raise().submit(row)
        return AsyncTask(self, row)

    async def tasks(
        self,
        *,
        state: TaskState | str | Iterable[TaskState | str] | None = None,
        since: float | datetime.datetime | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> list[AsyncTask]:
        """This session's tasks in creation order, every one or a page of them.

        ``state``: one state or several (``TaskState.COMPLETED``, ``"running"``);
        ``since``: created at or after this time (epoch seconds or an aware datetime);
        ``limit``: at most this many; ``cursor``: the id of the last task of the page
        before (``cursor=page[-1].id``). Served by the store's indexes, so a page costs
        the same with ten tasks or a million.
        """
        query = _query(state, since, limit, cursor)
        rows = await self._backend_or_raise().list(self.identifier, query)
        return [AsyncTask(self, r) for r in rows]

    async def wait_all(
        self, tasks: Iterable[AsyncTask], timeout: float | None = None
    ) -> list[AsyncTask]:
        """Wait until every one of ``tasks`` is COMPLETED (its outcome committed).

        One long poll covers thousands of tasks, where ``wait()`` on each costs a round trip
        apiece. Raises TimeoutError only if this wait timed out; the tasks are returned (and
        their fields refreshed) in the order given.
        """
        todo = list(tasks)
        for t in todo:
            if t._session is not self:
                raise InvalidRequest(f"task {t.id} belongs to another session object")
        async with asyncio.timeout(timeout):
            rows = await self._backend_or_raise().wait_many([t.id for t in todo])
        for t, row in zip(todo, rows, strict=True):
            t._row = row
        return todo

    async def task(self, task_id: str) -> AsyncTask:
        row = await self._backend_or_raise().get(task_id)
        if row.session != self.identifier:
            raise TaskNotFound(f"no task {task_id!r} in session {self.identifier!r}")
        return AsyncTask(self, row)

    async def remove(self, *tasks: AsyncTask | str) -> None:
        """Forget finished tasks (objects or ids) of this session; their files stay.

        Every one is checked first: an unknown id raises TaskNotFound and an unfinished task
        InvalidTransition, and then none is removed."""
        backend = self._backend_or_raise()
        rows = [await backend.get(t if isinstance(t, str) else t.id) for t in tasks]
        for row in rows:
            if row.session != self.identifier:
                raise TaskNotFound(f"no task {row.id!r} in session {self.identifier!r}")
            if row.snap.phase is not Phase.DONE:
                raise InvalidTransition(
                    f"cannot remove task {row.id} while it is "
                    f"{PHASE_STATE[row.snap.phase].value}: cancel it first, or wait until it "
                    "completes",
                    task_id=row.id,
                )
        for row in rows:
            await backend.remove(row.id)

    def events(
        self, since: int | None = None, *, kinds: Iterable[str] | None = None
    ) -> EventStream:
        """This session's events for a UI: a replay, then new ones as they happen.

        ``since=None``: the replay is the completion of every finished task not yet
        acknowledged. ``since=C``: every state event with a cursor after C (a cursor from
        an earlier stream), except completions already acknowledged, which never come back.
        ``kinds``: ``{"state"}``, ``{"progress"}`` or both (the default).

        The stream's ``replay_cursor`` is the cursor at which the replay ended (set once
        it has), and ``cursor`` the position to pass as ``since=`` to continue later
        without a gap. The stream reconnects by itself (restarting the daemon) from there.
        To handle each outcome once, use :meth:`completions`.
        """
        wanted = KINDS if kinds is None else frozenset(kinds)
        if not wanted or not wanted <= KINDS:
            raise InvalidRequest(f"kinds must be some of {sorted(KINDS)}, not {kinds!r}")
        source = self._backend_or_raise().events(self.identifier, since, wanted)
        return EventStream(source, since)

    async def completions(self, *, timeout: float | None = None) -> AsyncGenerator[AsyncTask]:
        """Each finished task of this session not yet acknowledged: first those that finished
        while nobody listened, then each as it finishes (NSURLSession's relaunch contract).

        Delivery is at least once until ``await task.acknowledge()``, and never after: handle
        the outcome (idempotently), then acknowledge. One stream yields a task once, also
        across daemon restarts; a new stream yields every unacknowledged one again.
        ``timeout``: end when nothing arrives for that many seconds (None: never).
        """
        source = self._backend_or_raise().completions(self.identifier)
        yielded: set[str] = set()
        seen: set[str] = set()  # since the last replay ended
        try:
            while True:
                try:
                    async with asyncio.timeout(timeout):
                        row = await anext(source)
                except (TimeoutError, StopAsyncIteration):
                    return
                if row is None:
                    # A replay ended: what it did not bring again was acknowledged, and
                    # cannot come back, so it need not be remembered.
                    yielded &= seen
                    seen = set()
                    continue
                seen.add(row.id)
                if row.id in yielded:
                    continue
                yielded.add(row.id)
                yield AsyncTask(self, row)
        finally:
            await source.aclose()  # type: ignore[attr-defined]

    async def schedule(
        self, url: str, path: str | os.PathLike[str], *, every: float | str,
        start_at: float | None = None, **options: Any,
    ) -> AsyncJob:  # fmt: skip
        """A background fetch job: the daemon fetches ``url`` into ``path`` every ``every``
        (seconds, or "15m", "1h") with a conditional GET, from ``start_at`` or now. Options
        are :meth:`download`'s: headers, on_complete, max_rate, priority, timeouts."""
        return await schedule_job(self, url, path, every=every, start_at=start_at, **options)

    async def jobs(self) -> list[AsyncJob]:
        """This session's background fetch jobs."""
        return await list_jobs(self)


class _LoopThread:
    """An event loop on a thread of the library's own, for the sync API."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bgtransfer", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Task(_TaskView):
    """A task seen from the sync API. Every field is a fresh read until the task has
    finished; a finished task never changes, so its fields are then read from memory."""

    def __init__(self, session: Session, inner: AsyncTask) -> None:
        self._session = session
        self._inner = inner
        self._row = inner._row

    def _fresh(self) -> TaskRow:
        # After the session is closed the fields keep the last value they had.
        if self._session.closed or self._row.snap.phase is Phase.DONE:
            return self._row
        self._row = self._session._call(_fresh_row(self._inner))
        return self._row

    def acknowledge(self) -> None:
        """Tell the session its completion was handled: it is no longer replayed."""
        self._session._call(self._inner.acknowledge())

    def history(self) -> list[dict[str, Any]]:
        """Every request made for this task: url, range_start, status, bytes, outcome."""
        return self._session._call(self._inner.history())

    def remove(self) -> None:
        """Forget this finished task (see :meth:`AsyncTask.remove`); its file stays."""
        self._session._call(self._inner.remove())

    def suspend(self) -> None:
        self._session._call(self._inner.suspend())

    def resume(self) -> None:
        self._session._call(self._inner.resume())

    def cancel(self) -> None:
        self._session._call(self._inner.cancel())

    def wait(self, timeout: float | None = None) -> Task:
        """Block until COMPLETED; raises TimeoutError only if this wait timed out."""
        self._session._call(self._inner.wait(timeout))
        self._row = self._inner._row
        return self


async def _fresh_row(task: AsyncTask) -> TaskRow:
    await task.refresh()
    return task._row


class Session:
    """The sync face of :class:`AsyncSession`: same methods, blocking."""

    def __init__(
        self,
        identifier: str,
        *,
        home: str | os.PathLike[str] | None = None,
        background: bool = True,
        max_active: int | None = None,
        max_per_host: int | None = None,
    ) -> None:
        self._async = AsyncSession(
            identifier,
            home=home,
            background=background,
            max_active=max_active,
            max_per_host=max_per_host,
        )
        self.identifier = identifier
        self.home = self._async.home
        self.background = background
        self._thread = _LoopThread()
        try:
            self._call(self._async.open())
        except BaseException:
            self._thread.stop()
            raise

    @property
    def closed(self) -> bool:
        return self._thread.loop.is_closed()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.closed:
            coro.close()
            raise TransferError("the session is closed")
        return self._thread.run(coro)

    def close(self) -> None:
        if self._thread.loop.is_closed():
            return
        try:
            self._call(self._async.aclose())
        finally:
            self._thread.stop()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def download(
        self,
        url: str,
        path: str | os.PathLike[str],
        *,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        resource_timeout: float = DEFAULT_RESOURCE_TIMEOUT,
        sha256: str | None = None,
        overwrite: bool = False,
        low_speed_limit: int = DEFAULT_LOW_SPEED_LIMIT,
        low_speed_time: float = DEFAULT_LOW_SPEED_TIME,
        max_attempts: int | None = None,
        retry_for: float | None = None,
        retry_wait: float = 1.0,
        max_retry_wait: float = 120.0,
        on_complete: Sequence[str] | None = None,
        segments: int = 1,
        max_bytes: int | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        start_at: float | None = None,
        max_rate: int | str | None = None,
        priority: str = "normal",
    ) -> Task:
        """See :meth:`AsyncSession.download`."""
        inner = self._call(
            self._async.download(
                url,
                path,
                headers=headers,
                request_timeout=request_timeout,
                resource_timeout=resource_timeout,
                sha256=sha256,
                overwrite=overwrite,
                low_speed_limit=low_speed_limit,
                low_speed_time=low_speed_time,
                max_attempts=max_attempts,
                retry_for=retry_for,
                retry_wait=retry_wait,
                max_retry_wait=max_retry_wait,
                on_complete=on_complete,
                segments=segments,
                max_bytes=max_bytes,
                idempotency_key=idempotency_key,
                metadata=metadata,
                start_at=start_at,
                max_rate=max_rate,
                priority=priority,
            )
        )
        return Task(self, inner)

    def download_many(self, items: Iterable[Mapping[str, Any]]) -> list[Task]:
        """Submit many downloads at once (see :meth:`AsyncSession.download_many`)."""
        return [Task(self, t) for t in self._call(self._async.download_many(items))]

    def upload(
        self,
        path: str | os.PathLike[str],
        url: str,
        *,
        method: str = "PUT",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        protocol: str = "plain",
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        resource_timeout: float = DEFAULT_RESOURCE_TIMEOUT,
        field_name: str = "file",
        form_fields: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        retry_unsafe: bool = False,
        chunk_size: int = 8 << 20,
        max_attempts: int | None = None,
        retry_for: float | None = None,
        retry_wait: float = 1.0,
        max_retry_wait: float = 120.0,
        on_complete: Sequence[str] | None = None,
        response_path: str | os.PathLike[str] | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        start_at: float | None = None,
        max_rate: int | str | None = None,
        priority: str = "normal",
    ) -> Task:
        inner = self._call(
            self._async.upload(
                path,
                url,
                method=method,
                headers=headers,
                protocol=protocol,
                request_timeout=request_timeout,
                resource_timeout=resource_timeout,
                field_name=field_name,
                form_fields=form_fields,
                retry_unsafe=retry_unsafe,
                chunk_size=chunk_size,
                max_attempts=max_attempts,
                retry_for=retry_for,
                retry_wait=retry_wait,
                max_retry_wait=max_retry_wait,
                on_complete=on_complete,
                response_path=response_path,
                idempotency_key=idempotency_key,
                metadata=metadata,
                start_at=start_at,
                max_rate=max_rate,
                priority=priority,
            )
        )
        return Task(self, inner)

    def tasks(
        self,
        *,
        state: TaskState | str | Iterable[TaskState | str] | None = None,
        since: float | datetime.datetime | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> list[Task]:
        """See :meth:`AsyncSession.tasks`: all tasks, or a filtered page of them."""
        found = self._call(self._async.tasks(state=state, since=since, limit=limit, cursor=cursor))
        return [Task(self, t) for t in found]

    def completions(self, *, timeout: float | None = None) -> Generator[Task, None, None]:
        """Each finished task not yet acknowledged, replay first then live (see
        :meth:`AsyncSession.completions`): ``for t in s.completions(): handle(t);
        t.acknowledge()``. ``timeout``: stop when nothing arrives for that many seconds."""
        stream = self._async.completions(timeout=timeout)

        async def step() -> AsyncTask | None:
            try:
                return await anext(stream)
            except StopAsyncIteration:
                return None

        try:
            while (inner := self._call(step())) is not None:
                yield Task(self, inner)
        finally:
            if not self.closed:
                self._call(stream.aclose())

    def wait_all(self, tasks: Iterable[Task], timeout: float | None = None) -> list[Task]:
        """Wait until every one of ``tasks`` is COMPLETED: one long poll for all of them.

        Raises TimeoutError only if this wait timed out."""
        todo = list(tasks)
        for t in todo:
            if t._session is not self:
                raise InvalidRequest(f"task {t.id} belongs to another session object")
        self._call(self._async.wait_all([t._inner for t in todo], timeout))
        for t in todo:
            t._row = t._inner._row
        return todo

    def task(self, task_id: str) -> Task:
        return Task(self, self._call(self._async.task(task_id)))

    def schedule(
        self, url: str, path: str | os.PathLike[str], *, every: float | str,
        start_at: float | None = None, **options: Any,
    ) -> Job:  # fmt: skip
        """See :meth:`AsyncSession.schedule`."""
        job = self._async.schedule(url, path, every=every, start_at=start_at, **options)
        inner = self._call(job)
        return Job(self, inner)

    def jobs(self) -> list[Job]:
        return [Job(self, j) for j in self._call(self._async.jobs())]

    def remove(self, *tasks: Task | str) -> None:
        """Forget finished tasks (objects or ids) of this session; their files stay.

        All are checked first (TaskNotFound, InvalidTransition for an unfinished one)."""
        self._call(self._async.remove(*(t if isinstance(t, str) else t._inner for t in tasks)))
