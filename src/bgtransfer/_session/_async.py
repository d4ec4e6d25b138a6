"""The asyncio face: AsyncSession and AsyncTask."""

from __future__ import annotations

import asyncio
import datetime
import os
import uuid
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bgtransfer._exceptions import InvalidRequest, InvalidTransition, TaskNotFound, TransferError
from bgtransfer._home import choose_store, resolve_home
from bgtransfer._jobs_api import AsyncJob, list_jobs, schedule_job
from bgtransfer._models import PHASE_STATE, Phase, TaskState
from bgtransfer._options import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_RETRY_WAIT,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RESOURCE_TIMEOUT,
    DEFAULT_RETRY_WAIT,
    DownloadOptions,
    UploadOptions,
    untyped,
)
from bgtransfer._protocol._machine import DEFAULT_LOW_SPEED_LIMIT, DEFAULT_LOW_SPEED_TIME
from bgtransfer._session._local import Local, submit_with_hook
from bgtransfer._session._remote import Remote
from bgtransfer._session._views import (
    KINDS,
    Backend,
    EventStream,
    TaskView,
    once_each,
    parse_query,
)
from bgtransfer._sources_api import split_sources
from bgtransfer._store._base import TaskRow
from bgtransfer._tasks import adopt_row, download_row, same_target, upload_row

if TYPE_CHECKING:
    from bgtransfer._engine._engine import Engine

__all__ = ["AsyncSession", "AsyncTask"]


class AsyncTask(TaskView):
    """A task seen from asyncio.

    Foreground tasks read fresh on every field access. Background tasks live in the daemon:
    their fields show the last answer from it; ``await task.refresh()`` asks again (every
    control call and ``wait()`` refresh too).
    """

    def __init__(self, session: AsyncSession, row: TaskRow) -> None:
        self._session = session
        self._row = row
        if session._backend is not None:  # wait() then knows if the daemon finished it
            session._backend.track(self)

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
        """Wait until COMPLETED; raises TimeoutError only if this wait timed out.

        A task already seen finished (its submit answer, a refresh, an earlier wait) never
        changes again: it is answered from memory, without asking the daemon."""
        backend = self._session._backend_or_raise()
        if self._row.snap.phase is Phase.DONE:
            return self
        async with asyncio.timeout(timeout):
            self._row = await backend.wait(self.id)
        return self


class AsyncSession:
    """A group of tasks named by ``identifier`` in one home.

    ``background=True`` hands tasks to the home's daemon (started on demand): they go on
    after this process exits. ``background=False`` runs them in this process; they stop with
    it and a later session resumes them.

    ``store``: where the tasks are kept, else ``$BGTRANSFER_STORE``, else the home's own
    SQLite store. ``"postgresql://user@host:port/db"`` is fleet mode: tasks are submitted,
    listed, waited for and controlled straight through PostgreSQL (no local daemon), and the
    fleet's workers (``bgtransfer --store URL worker``) run them. ``"sqlite:///HOME"`` names
    a home (as ``home=`` does).
    """

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
        chosen, home = choose_store(store, home, background)
        self.identifier = identifier
        self.background = background
        self.home = resolve_home(home)
        self._fleet = chosen
        self._backend: Backend | None = None
        self._max = (max_active or 16, max_per_host or 6)

    async def open(self) -> AsyncSession:
        if self._backend is None:
            backend: Backend = (
                Remote(self.home, self._fleet)
                if self.background
                else Local(self.home, self._max[0], self._max[1], self.identifier)
            )
            await backend.open()
            self._backend = backend
        return self

    @property
    def store(self) -> str | None:
        """The PostgreSQL store this session works on (password redacted); None: the
        home's own store."""
        return None if self._fleet is None else self._fleet.shown

    async def aclose(self) -> None:
        if self._backend is not None:
            await self._backend.close()
            self._backend = None

    async def __aenter__(self) -> AsyncSession:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _backend_or_raise(self) -> Backend:
        if self._backend is None:
            raise TransferError("the session is not open (use 'async with' or await open())")
        return self._backend

    def _engine_or_raise(self) -> Engine:
        """The in-process engine of a foreground session (for tests and tools)."""
        backend = self._backend_or_raise()
        if not isinstance(backend, Local):
            raise TransferError("a background session has no engine in this process")
        return backend._engine()

    async def download(
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
        ``ls --json``, events). ``ca_bundle``: README, "HTTPS and private CAs".

        ``adopt``: a partial file to resume instead of starting a new one (its record says
        how far it is vouched for; see :meth:`adopt`, which also reads the URL from it).
        ``checksums`` (``{"sha512": HEX}``) and ``pieces``: see the README, "Integrity".

        Bad input raises InvalidRequest here, before any task exists. When this returns,
        the task is committed to the store: it runs even if this process dies at once.

        ``urls=[...]`` instead of ``url``: one file from several sources (mirrors; they must
        serve the same bytes). ``refresh``: how to get a new URL when this one expires (a
        callable in a foreground session, an argv in the daemon); see the README, "Expired
        links (refresh hooks)" and "Mirrors and Metalink".
        """
        try:
            url, urls, refresh, hook = split_sources(url, urls, refresh, background=self.background)
            if path is None:
                raise InvalidRequest("a target path is needed: download(url, path)")
            options = DownloadOptions(
                **untyped(
                    urls=urls,
                    refresh=refresh,
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
                    metadata=metadata,
                    start_at=start_at,
                    max_rate=max_rate,
                    priority=priority,
                    checksums=checksums,
                    pieces=pieces,
                    adopt=adopt,
                    ca_bundle=ca_bundle,
                )
            )
            row = download_row(
                self.identifier,
                url,
                path,
                options,
                background=self.background,
                idempotency_key=uuid.uuid4().hex if idempotency_key is None else idempotency_key,
                check_exists=idempotency_key is None,
            )
        except InvalidRequest:
            twin = await self._twin(idempotency_key, "download", url, path)
            if twin is None:
                raise
            return twin
        return AsyncTask(self, await self._submit_with_hook(row, hook))

    async def _submit_with_hook(self, row: TaskRow, hook: Callable[[Any], Any] | None) -> TaskRow:
        return await submit_with_hook(self._backend_or_raise(), row, hook)

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

    async def adopt(
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
    ) -> AsyncTask:
        """Resume ``partial``, a download's partial file that its record describes (written
        beside it by any bgtransfer: another home, another machine, a store that is gone).

        The record gives the URL (``url=`` replaces it: a fresh signed URL for the same
        file), the validator, the length and how far the file is vouched for; the download
        goes on from there with Range and If-Range, so a resource that changed since starts
        over cleanly. ``path``: the finished file, in the partial's directory (default: the
        name the record gives). Other keyword arguments are :meth:`download`'s options.

        Raises :class:`NoPartialRecord`, :class:`PartialRecordCorrupt`,
        :class:`PartialRecordMismatch` (the record describes another file),
        :class:`PartialInUse` (a task of this home already writes it), or
        :class:`InvalidRequest`.
        """
        row = adopt_row(
            self.identifier,
            partial,
            path,
            url=url,
            headers=headers,
            sha256=sha256,
            segments=segments,
            idempotency_key=idempotency_key,
            background=self.background,
            options=options,
        )
        return AsyncTask(self, await self._backend_or_raise().submit(row))

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
                options = DownloadOptions(**opts)
                rows.append(
                    download_row(
                        self.identifier,
                        url,
                        path,
                        options,
                        background=self.background,
                        idempotency_key=uuid.uuid4().hex if key is None else key,
                        check_exists=key is None,
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
    ) -> AsyncTask:
        """Start uploading the file at ``path`` to ``url``; returns at once.

        ``idempotency_key`` and ``metadata`` as for :meth:`download`.

        ``protocol``: "plain" (one streamed request), "multipart" (a form POST), "tus"
        (tus 1.0) or "ietf" (draft-ietf-httpbis-resumable-upload-05); the last two resume
        from the server's offset after any interruption. ``response_path``: where the whole
        body of the server's final answer is written (in place before the task completes);
        ``Task.response_body`` keeps its first 64 KiB either way. ``refresh``: as for
        :meth:`download` (an expired URL or bearer token: new headers reach every later
        request, and a resumable upload asks the server its offset again).
        """
        try:
            _, _, refresh, hook = split_sources(url, None, refresh, background=self.background)
            options = UploadOptions(
                **untyped(
                    refresh=refresh,
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
                    metadata=metadata,
                    start_at=start_at,
                    max_rate=max_rate,
                    priority=priority,
                    ca_bundle=ca_bundle,
                )
            )
            row = upload_row(
                self.identifier,
                path,
                url,
                options,
                background=self.background,
                idempotency_key=uuid.uuid4().hex if idempotency_key is None else idempotency_key,
            )
        except InvalidRequest:
            twin = await self._twin(idempotency_key, "upload", url, path)
            if twin is None:
                raise
            return twin
        return AsyncTask(self, await self._submit_with_hook(row, hook))

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
        query = parse_query(state, since, limit, cursor)
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
        rows = once_each(source, timeout)
        try:
            async for row in rows:
                yield AsyncTask(self, row)
        finally:
            await rows.aclose()  # at once: it closes the stream to the daemon

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
