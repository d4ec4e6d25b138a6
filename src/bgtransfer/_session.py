"""Sessions and tasks: the public Python API (asyncio and sync)."""

from __future__ import annotations

import asyncio
import builtins
import os
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping, Sequence
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
from bgtransfer._models import PHASE_STATE, Event, Phase, TaskState
from bgtransfer._store._base import StoredEvent, TaskRow
from bgtransfer._tasks import build_row, build_upload_row, row_from_wire, task_dict

if TYPE_CHECKING:
    # Imported when a foreground session opens: a client of the daemon never needs the
    # engine (or aiohttp), and starts faster without them.
    from bgtransfer._engine._engine import Engine
    from bgtransfer._store._sqlite import SQLiteStore

__all__ = ["AsyncSession", "AsyncTask", "Session", "Task", "resolve_home"]

T = TypeVar("T")
STORE_NAME = "bgtransfer.sqlite3"
DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_RESOURCE_TIMEOUT = 7 * 86400.0


def resolve_home(home: str | os.PathLike[str] | None = None) -> str:
    """The home directory: argument, else $BGTRANSFER_HOME, else the user state dir."""
    chosen = (
        os.fspath(home)
        if home is not None
        else os.environ.get("BGTRANSFER_HOME") or platformdirs.user_state_dir("bgtransfer")
    )
    path = os.path.abspath(os.path.expanduser(chosen))
    os.makedirs(path, mode=0o700, exist_ok=True)
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
    def peek(self, row: TaskRow) -> TaskRow: ...
    async def list(self, session: str) -> list[TaskRow]: ...
    async def control(self, task_id: str, verb: str) -> TaskRow: ...
    async def wait(self, task_id: str) -> TaskRow: ...
    async def wait_many(self, ids: builtins.list[str]) -> builtins.list[TaskRow]: ...
    async def history(self, task_id: str) -> builtins.list[dict[str, Any]]: ...
    async def remove(self, task_id: str) -> None: ...
    def events(self, session: str, since: int | None) -> AsyncIterator[Event]: ...


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

    async def submit(self, row: TaskRow) -> TaskRow:
        self._engine().submit(row)
        return row

    async def submit_many(self, rows: builtins.list[TaskRow]) -> builtins.list[TaskRow]:
        self._engine().submit_many(rows)
        return rows

    async def get(self, task_id: str) -> TaskRow:
        return self._engine().get(task_id)

    def peek(self, row: TaskRow) -> TaskRow:
        return self._engine().get(row.id)

    async def list(self, session: str) -> list[TaskRow]:
        engine = self._engine()
        return [engine.get(r.id) for r in engine.store.list(session)]

    async def control(self, task_id: str, verb: str) -> TaskRow:
        engine = self._engine()
        if verb == "ack":
            engine.get(task_id)
            engine.store.acknowledge(task_id)
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

    async def events(self, session: str, since: int | None) -> AsyncIterator[Event]:
        engine = self._engine()
        q = engine.subscribe()
        try:
            if since is not None:
                for ev in engine.store.events_since(session, since):
                    yield _from_stored(ev)
            while True:
                ev2 = await q.get()
                if ev2.session == session:
                    yield ev2
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

    def peek(self, row: TaskRow) -> TaskRow:
        return row

    async def history(self, task_id: str) -> list[dict[str, Any]]:
        data = await self.client.call("GET", f"/v1/tasks/{quote(task_id)}/attempts")
        return list(data)

    async def remove(self, task_id: str) -> None:
        await self.client.call("DELETE", f"/v1/tasks/{quote(task_id)}")

    async def list(self, session: str) -> list[TaskRow]:
        data = await self.client.call("GET", "/v1/tasks", params={"session": session})
        return [row_from_wire(d) for d in data]

    async def control(self, task_id: str, verb: str) -> TaskRow:
        return row_from_wire(await self.client.call("POST", f"/v1/tasks/{quote(task_id)}/{verb}"))

    async def wait(self, task_id: str) -> TaskRow:
        while True:
            row = row_from_wire(
                await self.client.call(
                    "GET", f"/v1/tasks/{quote(task_id)}/wait", params={"timeout": "25"}, timeout=40
                )
            )
            if row.snap.phase is Phase.DONE:
                return row

    async def wait_many(self, ids: builtins.list[str]) -> builtins.list[TaskRow]:
        done: dict[str, TaskRow] = {}
        for start in range(0, len(ids), WAIT_BATCH):
            pending = ids[start : start + WAIT_BATCH]
            while pending:
                answer = await self.client.call(
                    "POST", "/v1/wait", body={"ids": pending, "timeout": 25}, timeout=40
                )
                rows = [row_from_wire(d) for d in answer["tasks"]]
                done.update((r.id, r) for r in rows if r.snap.phase is Phase.DONE)
                pending = [r.id for r in rows if r.snap.phase is not Phase.DONE]
        return [done[i] for i in ids]

    async def events(self, session: str, since: int | None) -> AsyncIterator[Event]:
        async for d in self.client.events(session, since):
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
        """Tell the session its completion was handled: it is no longer replayed."""
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
        max_active: int = 16,
        max_per_host: int = 6,
    ) -> None:
        if not isinstance(identifier, str) or not identifier.strip():  # type: ignore[redundant-expr]
            raise InvalidRequest(f"session identifier must be a non-empty string: {identifier!r}")
        for name, value in (("max_active", max_active), ("max_per_host", max_per_host)):
            if type(value) is not int or value < 1:
                raise InvalidRequest(f"{name} must be a positive integer, not {value!r}")
        self.identifier = identifier
        self.background = background
        self.home = resolve_home(home)
        self._backend: _Backend | None = None
        self._max = (max_active, max_per_host)

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
        low_speed_limit: int = 0,
        low_speed_time: float = 30.0,
        max_attempts: int | None = None,
        retry_for: float | None = None,
        retry_wait: float = 1.0,
        max_retry_wait: float = 120.0,
        on_complete: Sequence[str] | None = None,
        segments: int = 1,
    ) -> AsyncTask:
        """Start downloading ``url`` into ``path``; returns at once with a RUNNING task.

        ``segments=N`` (1-16) downloads over up to N connections at once when the server
        allows ranges of one fixed version (aria2c -s N); otherwise one connection is used.

        Bad input raises InvalidRequest here, before any task exists.
        """
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
            idempotency_key=uuid.uuid4().hex,
        )
        row = await self._backend_or_raise().submit(row)
        return AsyncTask(self, row)

    async def download_many(self, items: Iterable[Mapping[str, Any]]) -> list[AsyncTask]:
        """Submit many downloads at once: each item has ``url``, ``path`` and any option of
        :meth:`download`. All are validated first (InvalidRequest names the first bad one,
        and then none is created); they are stored in one transaction."""
        rows = []
        for n, item in enumerate(items):
            opts = dict(item)
            try:
                url, path = opts.pop("url"), opts.pop("path")
            except KeyError as exc:
                raise InvalidRequest(f"item {n} has no {exc.args[0]!r}") from None
            try:
                rows.append(
                    build_row(
                        self.identifier,
                        url,
                        path,
                        background=self.background,
                        idempotency_key=uuid.uuid4().hex,
                        **opts,
                    )
                )
            except TypeError as exc:
                raise InvalidRequest(f"item {n}: {exc}") from None
        if not rows:
            return []
        done = await self._backend_or_raise().submit_many(rows)
        return [AsyncTask(self, r) for r in done]

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
    ) -> AsyncTask:
        """Start uploading the file at ``path`` to ``url``; returns at once.

        ``protocol``: "plain" (one streamed request), "multipart" (a form POST), "tus"
        (tus 1.0) or "ietf" (draft-ietf-httpbis-resumable-upload-05); the last two resume
        from the server's offset after any interruption. ``response_path``: where the whole
        body of the server's final answer is written (in place before the task completes);
        ``Task.response_body`` keeps its first 64 KiB either way.
        """
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
            idempotency_key=uuid.uuid4().hex,
            response_path=response_path,
        )
        row = await self._backend_or_raise().submit(row)
        return AsyncTask(self, row)

    async def tasks(self) -> list[AsyncTask]:
        rows = await self._backend_or_raise().list(self.identifier)
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

    async def events(self, since: int | None = None) -> AsyncIterator[Event]:
        """This session's events: a replay, then new ones as they happen.

        Background sessions replay, with ``since=None``, the completion of every task that
        finished and was not acknowledged (``task.acknowledge()``), so a process that was
        away misses nothing; with ``since=cursor``, every state event after that cursor.
        """
        async for ev in self._backend_or_raise().events(self.identifier, since):
            yield ev


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
        max_active: int = 16,
        max_per_host: int = 6,
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
        low_speed_limit: int = 0,
        low_speed_time: float = 30.0,
        max_attempts: int | None = None,
        retry_for: float | None = None,
        retry_wait: float = 1.0,
        max_retry_wait: float = 120.0,
        on_complete: Sequence[str] | None = None,
        segments: int = 1,
    ) -> Task:
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
            )
        )
        return Task(self, inner)

    def tasks(self) -> list[Task]:
        return [Task(self, t) for t in self._call(self._async.tasks())]

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

    def remove(self, *tasks: Task | str) -> None:
        """Forget finished tasks (objects or ids) of this session; their files stay.

        All are checked first (TaskNotFound, InvalidTransition for an unfinished one)."""
        self._call(self._async.remove(*(t if isinstance(t, str) else t._inner for t in tasks)))
