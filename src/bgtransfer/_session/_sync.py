"""The sync face: Session and Task, blocking calls run on a loop thread of their own."""

from __future__ import annotations

import asyncio
import datetime
import os
import threading
from collections.abc import Callable, Coroutine, Generator, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from bgtransfer._exceptions import InvalidRequest, TransferError
from bgtransfer._jobs_api import Job
from bgtransfer._models import Phase, TaskState
from bgtransfer._options import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_RETRY_WAIT,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RESOURCE_TIMEOUT,
    DEFAULT_RETRY_WAIT,
)
from bgtransfer._protocol._machine import DEFAULT_LOW_SPEED_LIMIT, DEFAULT_LOW_SPEED_TIME
from bgtransfer._session._async import AsyncSession, AsyncTask
from bgtransfer._session._views import TaskView
from bgtransfer._store._base import TaskRow

__all__ = ["Session", "Task"]

T = TypeVar("T")


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


class Task(TaskView):
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
        if self._inner._row.snap.phase is Phase.DONE and not self._session.closed:
            # Finished rows never change: no hop to the loop thread. Seen finished by
            # this task's own wait or by another's answer (see _session/_known).
            self._row = self._inner._row
            return self
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
        store: str | None = None,
    ) -> None:
        self._async = AsyncSession(
            identifier,
            home=home,
            background=background,
            max_active=max_active,
            max_per_host=max_per_host,
            store=store,
        )
        self.identifier = identifier
        self.home = self._async.home
        self.store = self._async.store
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
        url: str | None = None,
        path: str | os.PathLike[str] | None = None,
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
        retry_wait: float = DEFAULT_RETRY_WAIT,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        on_complete: Sequence[str] | None = None,
        segments: int = 1,
        max_bytes: int | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        start_at: float | None = None,
        max_rate: int | str | None = None,
        priority: str = "normal",
        urls: Sequence[str] = (),
        refresh: Sequence[str] | Callable[[Any], Any] | None = None,
        adopt: str | os.PathLike[str] | None = None,
        checksums: Mapping[str, str] | Iterable[str] | str | None = (),
        pieces: Mapping[str, Any] | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
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
                urls=urls,
                refresh=refresh,
                checksums=checksums,
                pieces=pieces,
                adopt=adopt,
                ca_bundle=ca_bundle,
            )
        )
        return Task(self, inner)

    def adopt(
        self,
        partial: str | os.PathLike[str],
        path: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        sha256: str | None = None,
        segments: int | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Task:
        """Resume a partial file its record describes (see :meth:`AsyncSession.adopt`)."""
        inner = self._call(
            self._async.adopt(
                partial,
                path,
                url=url,
                headers=headers,
                sha256=sha256,
                segments=segments,
                idempotency_key=idempotency_key,
                **options,
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
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_attempts: int | None = None,
        retry_for: float | None = None,
        retry_wait: float = DEFAULT_RETRY_WAIT,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        on_complete: Sequence[str] | None = None,
        response_path: str | os.PathLike[str] | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        start_at: float | None = None,
        max_rate: int | str | None = None,
        priority: str = "normal",
        refresh: Sequence[str] | Callable[[Any], Any] | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
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
                refresh=refresh,
                ca_bundle=ca_bundle,
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
