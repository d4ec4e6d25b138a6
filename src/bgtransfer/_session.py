"""Sessions and tasks: the public Python API (asyncio and sync)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

import platformdirs

from bgtransfer._engine._engine import Engine, new_task_id
from bgtransfer._engine._files import check_target, partial_path
from bgtransfer._exceptions import InvalidRequest, TransferError
from bgtransfer._models import Event, Phase, TaskState
from bgtransfer._protocol._machine import Snapshot, Spec
from bgtransfer._protocol._validate import (
    check_headers,
    check_sha256,
    check_timeout,
    check_url,
)
from bgtransfer._store._base import TaskRow
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
        from bgtransfer._models import PHASE_STATE

        return PHASE_STATE[self._fresh().snap.phase]

    @property
    def detail(self) -> str:
        return self._fresh().snap.detail

    @property
    def bytes_received(self) -> int:
        return self._fresh().snap.offset

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
    def restarts(self) -> int:
        return self._fresh().snap.restarts

    @property
    def attempts(self) -> int:
        return self._fresh().snap.attempts

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON shape used by the CLI and the control API."""
        r = self._fresh()
        from bgtransfer._models import PHASE_STATE

        return {
            "id": r.id,
            "session": r.session,
            "url": r.spec.url,
            "path": r.path,
            "state": PHASE_STATE[r.snap.phase].value,
            "detail": r.snap.detail,
            "bytes_received": r.snap.offset,
            "bytes_expected": r.snap.total,
            "status_code": r.snap.status_code,
            "error": None if r.snap.error is None else r.snap.error.message,
            "error_code": None if r.snap.error is None else r.snap.error.code,
            "restarts": r.snap.restarts,
            "attempts": r.snap.attempts,
            "created_at": r.created_at,
            "finished_at": r.finished_at,
        }


class AsyncTask(_TaskView):
    def __init__(self, session: AsyncSession, row: TaskRow) -> None:
        self._session = session
        self._row = row

    def _fresh(self) -> TaskRow:
        self._row = self._session._engine_or_raise().get(self._row.id)
        return self._row

    async def suspend(self) -> None:
        await self._session._engine_or_raise().suspend(self.id)

    async def resume(self) -> None:
        await self._session._engine_or_raise().resume(self.id)

    async def cancel(self) -> None:
        await self._session._engine_or_raise().cancel(self.id)

    async def wait(self, timeout: float | None = None) -> AsyncTask:
        """Wait until COMPLETED; raises TimeoutError only if this wait timed out."""
        engine = self._session._engine_or_raise()
        async with asyncio.timeout(timeout):
            self._row = await engine.wait(self.id)
        return self


class AsyncSession:
    """A group of tasks named by ``identifier`` in one home.

    ``background=False`` runs tasks in this process (they end with it and resume later);
    ``background=True`` hands them to the home's daemon (not available yet).
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
        self._max = (max_active, max_per_host)
        self._engine: Engine | None = None
        self._store: SQLiteStore | None = None

    async def open(self) -> AsyncSession:
        if self.background:
            raise TransferError(
                "background sessions run in the bgtransfer daemon, which this version does "
                "not ship yet; use background=False"
            )
        if self._engine is None:
            self._store = SQLiteStore(os.path.join(self.home, STORE_NAME))
            engine = Engine(
                self._store, self.home, max_active=self._max[0], max_per_host=self._max[1]
            )
            await engine.start()
            engine.recover(self.identifier)
            self._engine = engine
        return self

    async def aclose(self) -> None:
        if self._engine is not None:
            await self._engine.close()
            self._engine = None
        if self._store is not None:
            self._store.close()
            self._store = None

    async def __aenter__(self) -> AsyncSession:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _engine_or_raise(self) -> Engine:
        if self._engine is None:
            raise TransferError("the session is not open (use 'async with' or await open())")
        return self._engine

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
        retry_wait: float = 1.0,
        max_retry_wait: float = 120.0,
    ) -> AsyncTask:
        """Start downloading ``url`` into ``path``; returns at once with a RUNNING task."""
        row = _build_row(
            self.identifier,
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
            retry_wait=retry_wait,
            max_retry_wait=max_retry_wait,
            background=self.background,
        )
        self._engine_or_raise().submit(row)
        return AsyncTask(self, row)

    async def tasks(self) -> list[AsyncTask]:
        engine = self._engine_or_raise()
        return [AsyncTask(self, engine.get(r.id)) for r in engine.store.list(self.identifier)]

    async def task(self, task_id: str) -> AsyncTask:
        row = self._engine_or_raise().get(task_id)
        return AsyncTask(self, row)

    async def events(self) -> AsyncIterator[Event]:
        """Progress and state events of this session's tasks, as they happen."""
        engine = self._engine_or_raise()
        q = engine.subscribe()
        try:
            while True:
                ev = await q.get()
                row = engine.get(ev.task_id)
                if row.session == self.identifier:
                    yield ev
        finally:
            engine.unsubscribe(q)


def _build_row(
    session: str,
    url: object,
    path: object,
    *,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
    request_timeout: object,
    resource_timeout: object,
    sha256: object,
    overwrite: bool,
    low_speed_limit: object,
    low_speed_time: object,
    max_attempts: object,
    retry_wait: object,
    max_retry_wait: object,
    background: bool,
) -> TaskRow:
    check_url(url)
    assert isinstance(url, str)
    hdrs = check_headers(headers)
    rt = check_timeout("request_timeout", request_timeout)
    rst = check_timeout("resource_timeout", resource_timeout)
    digest = check_sha256(sha256)
    if (
        isinstance(low_speed_limit, bool)
        or not isinstance(low_speed_limit, int)
        or low_speed_limit < 0
    ):
        raise InvalidRequest(f"low_speed_limit must be a non-negative int, not {low_speed_limit!r}")
    lst = check_timeout("low_speed_time", low_speed_time)
    if max_attempts is not None and (
        isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
    ):
        raise InvalidRequest(f"max_attempts must be a positive int or None, not {max_attempts!r}")
    rw = check_timeout("retry_wait", retry_wait)
    mrw = check_timeout("max_retry_wait", max_retry_wait)
    target = check_target(path, overwrite=bool(overwrite))
    task_id = new_task_id()
    spec = Spec(
        url=url,
        headers=tuple(hdrs),
        request_timeout=rt,
        resource_timeout=rst,
        sha256=digest,
        low_speed_limit=low_speed_limit,
        low_speed_time=lst,
        max_attempts=max_attempts,
        retry_wait=rw,
        max_retry_wait=max(mrw, rw),
    )
    now = time.time()
    return TaskRow(
        id=task_id,
        session=session,
        path=target,
        partial=partial_path(target, task_id),
        spec=spec,
        overwrite=bool(overwrite),
        snap=Snapshot(phase=Phase.QUEUED, detail="queued"),
        owner=None,
        background=background,
        created_at=now,
        updated_at=now,
    )


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
    """A task seen from the sync API. Every field is a fresh read."""

    def __init__(self, session: Session, inner: AsyncTask) -> None:
        self._session = session
        self._inner = inner
        self._row = inner._row

    def _fresh(self) -> TaskRow:
        # After the session is closed the fields keep the last value they had.
        if self._session.closed:
            return self._row
        self._row = self._session._call(_fresh_row(self._inner))
        return self._row

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
    return task._fresh()


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
        retry_wait: float = 1.0,
        max_retry_wait: float = 120.0,
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
                retry_wait=retry_wait,
                max_retry_wait=max_retry_wait,
            )
        )
        return Task(self, inner)

    def tasks(self) -> list[Task]:
        return [Task(self, t) for t in self._call(self._async.tasks())]

    def task(self, task_id: str) -> Task:
        return Task(self, self._call(self._async.task(task_id)))
