"""What both faces share: the read-only view of a task, tasks() queries, the
event stream, and the interface of the two backends (``_local`` runs the engine in this
process, ``_remote`` talks to the home's daemon)."""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import datetime
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from bgtransfer._exceptions import InvalidRequest, TransferError
from bgtransfer._models import PHASE_STATE, Event, TaskState
from bgtransfer._session._known import Tracked
from bgtransfer._store._base import TaskRow
from bgtransfer._tasks import task_dict

__all__ = ["KINDS", "Backend", "EventStream", "Query", "TaskView", "once_each", "parse_query"]

# The kinds of events a stream may ask for.
KINDS = frozenset({"state", "progress"})


class TaskView:
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


class Backend(Protocol):
    """What a face needs of where the tasks run: this process or the daemon."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def submit(self, row: TaskRow) -> TaskRow: ...
    async def submit_many(self, rows: builtins.list[TaskRow]) -> builtins.list[TaskRow]: ...
    async def get(self, task_id: str) -> TaskRow: ...
    async def find_key(self, session: str, key: str) -> TaskRow | None: ...
    def peek(self, row: TaskRow) -> TaskRow: ...
    async def list(self, session: str, query: Query | None = None) -> list[TaskRow]: ...
    async def control(self, task_id: str, verb: str) -> TaskRow: ...
    async def wait(self, task_id: str) -> TaskRow: ...
    def track(self, task: Tracked) -> None: ...
    async def wait_many(self, ids: builtins.list[str]) -> builtins.list[TaskRow]: ...
    async def history(self, task_id: str) -> builtins.list[dict[str, Any]]: ...
    async def remove(self, task_id: str) -> None: ...
    def events(
        self, session: str, since: int | None, kinds: frozenset[str]
    ) -> AsyncIterator[Event | int]: ...
    def completions(self, session: str) -> AsyncIterator[TaskRow | None]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    """``tasks()`` filters: public state names, created at or after ``since``, a page of
    ``limit`` after the task ``after``."""

    states: tuple[str, ...] = ()
    since: float | None = None
    after: str | None = None
    limit: int = -1

    def phases(self) -> builtins.list[str]:
        """The stored phases behind the public states asked for."""
        wanted = {TaskState(name) for name in self.states}
        return sorted(p.value for p, s in PHASE_STATE.items() if s in wanted)


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


def _state_names(state: object) -> tuple[str, ...]:
    if state is None:
        return ()
    if isinstance(state, TaskState | str) or not isinstance(state, Iterable):
        many: builtins.list[object] = [state]
    else:
        many = builtins.list(state)
    names = []
    for one in many:
        name = one.value if isinstance(one, TaskState) else one
        if not isinstance(name, str) or name.lower() not in {s.value for s in TaskState}:
            known = ", ".join(s.value for s in TaskState)
            raise InvalidRequest(f"state must be a TaskState or one of {known}, not {one!r}")
        names.append(name.lower())
    return tuple(names)


def _epoch(since: object) -> float | None:
    if since is None:
        return None
    if isinstance(since, datetime.datetime):
        if since.tzinfo is None:
            raise InvalidRequest("since must be an aware datetime (with a tzinfo) or epoch seconds")
        return since.timestamp()
    if isinstance(since, bool) or not isinstance(since, int | float):
        raise InvalidRequest(f"since must be epoch seconds or a datetime, not {since!r}")
    return float(since)


def _limit(limit: object) -> int:
    if limit is None:
        return -1
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise InvalidRequest(f"limit must be a positive integer, not {limit!r}")
    return limit


def _cursor(cursor: object) -> str | None:
    if cursor is not None and (not isinstance(cursor, str) or not cursor):
        raise InvalidRequest(f"cursor must be a task id (the last of the page before): {cursor!r}")
    return cursor


def parse_query(state: object, since: object, limit: object, cursor: object) -> Query | None:
    """Validated ``tasks()`` filters (typed ``object``: callers pass anything at runtime);
    None when there are none."""
    if state is None and since is None and limit is None and cursor is None:
        return None
    states = _state_names(state)
    when = _epoch(since)
    most = _limit(limit)
    return Query(states, when, _cursor(cursor), most)


async def once_each(
    source: AsyncIterator[TaskRow | None], timeout: float | None
) -> AsyncGenerator[TaskRow]:
    """The completion stream's rows, each task once (a replay after a reconnect brings
    unacknowledged ones again); ends when nothing arrives for ``timeout`` seconds. A None
    from ``source`` marks the end of a replay."""
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
            yield row
    finally:
        await source.aclose()  # type: ignore[attr-defined]
