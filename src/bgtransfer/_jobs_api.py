"""Background fetch jobs seen from the Python API: ``Session.schedule()`` returns a Job."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from bgtransfer._clients import Client
from bgtransfer._exceptions import InvalidRequest, TransferError

__all__ = ["AsyncJob", "Job", "list_jobs", "schedule_job"]

T = TypeVar("T")


# What a job needs of the session that made it: the faces import this module, so it names
# them by these shapes, not by import (no cycle, not even under TYPE_CHECKING).
class AsyncOwner(Protocol):
    @property
    def identifier(self) -> str: ...
    def _backend_or_raise(self) -> object: ...


class SyncOwner(Protocol):
    @property
    def closed(self) -> bool: ...
    def _call(self, coro: Coroutine[Any, Any, T]) -> T: ...


def _client(session: AsyncOwner) -> Client:
    """The session's client: its home's daemon, or a fleet's store (whose workers run the
    jobs). A foreground session has none: its tasks end with its process."""
    backend = session._backend_or_raise()
    client: Client | None = getattr(backend, "client", None)
    if client is None:
        raise InvalidRequest(
            "background fetch jobs run in the daemon (or a fleet's workers): use a "
            "background session (Session(..., background=True), or store='postgresql://...')"
        )
    return client


async def schedule_job(
    session: AsyncOwner,
    url: str,
    path: str | os.PathLike[str],
    *,
    every: float | str | dt.timedelta,
    start_at: float | dt.datetime | None = None,
    **options: Any,
) -> AsyncJob:
    client = _client(session)
    if isinstance(every, dt.timedelta):
        every = every.total_seconds()
    if isinstance(start_at, dt.datetime):
        start_at = (start_at if start_at.tzinfo else start_at.astimezone()).timestamp()
    if isinstance(options.get("headers"), dict):
        options["headers"] = list(options["headers"].items())
    if options.get("headers") is not None:
        options["headers"] = [list(h) for h in options["headers"]]
    if options.get("on_complete") is not None:
        options["on_complete"] = list(options["on_complete"])
    if not isinstance(path, str | os.PathLike):
        raise InvalidRequest(f"path must be a string or path, not {path!r}")
    body = {
        "session": session.identifier,
        "url": url,
        "path": os.path.abspath(os.fspath(path)),  # noqa: ASYNC240 - no I/O, just cwd
        "every": every,
        "start_at": start_at,
        **options,
    }
    data = await client.call("POST", "/v1/jobs", body=body)
    return AsyncJob(session, data)


async def list_jobs(session: AsyncOwner) -> list[AsyncJob]:
    client = _client(session)
    data = await client.call("GET", "/v1/jobs", params={"session": session.identifier})
    return [AsyncJob(session, d) for d in data]


class AsyncJob:
    """A background fetch job: ``id``, ``url``, ``path``, ``every`` (seconds), ``next_run``
    (seconds since the epoch, as of the last refresh), ``runs()``, ``cancel()``."""

    def __init__(self, session: AsyncOwner, data: dict[str, Any]) -> None:
        self._session = session
        self._data = data

    @property
    def id(self) -> str:
        return str(self._data["id"])

    @property
    def url(self) -> str:
        return str(self._data["url"])

    @property
    def path(self) -> str:
        return str(self._data["path"])

    @property
    def every(self) -> float:
        return float(self._data["every"])

    @property
    def next_run(self) -> float:
        return float(self._data["next_run"])

    def __repr__(self) -> str:
        return f"<AsyncJob {self.id[:8]} every {self.every:g} s {self.url}>"

    def to_dict(self) -> dict[str, Any]:
        return dict(self._data)

    async def refresh(self) -> AsyncJob:
        self._data = await _client(self._session).call("GET", f"/v1/jobs/{quote(self.id)}")
        return self

    async def runs(self) -> list[dict[str, Any]]:
        """Every run so far: ``n``, ``task_id``, ``scheduled_for``, ``started_at``,
        ``finished_at``, ``outcome`` ("running", "updated", "not modified", "failed: ...",
        "cancelled"), ``status`` (the last HTTP status)."""
        await self.refresh()
        return list(self._data["runs"])

    async def cancel(self) -> None:
        """Unschedule: no further runs (a run in progress finishes)."""
        await _client(self._session).call("DELETE", f"/v1/jobs/{quote(self.id)}")


class Job:
    """The sync face of :class:`AsyncJob`; ``next_run`` is a fresh read."""

    def __init__(self, session: SyncOwner, inner: AsyncJob) -> None:
        self._session = session
        self._inner = inner

    @property
    def id(self) -> str:
        return self._inner.id

    @property
    def url(self) -> str:
        return self._inner.url

    @property
    def path(self) -> str:
        return self._inner.path

    @property
    def every(self) -> float:
        return self._inner.every

    @property
    def next_run(self) -> float:
        if not self._session.closed:
            try:
                self._session._call(self._inner.refresh())
            except TransferError:
                pass  # unscheduled: the last value known
        return self._inner.next_run

    def __repr__(self) -> str:
        return f"<Job {self.id[:8]} every {self.every:g} s {self.url}>"

    def to_dict(self) -> dict[str, Any]:
        return self._inner.to_dict()

    def runs(self) -> list[dict[str, Any]]:
        return self._session._call(self._inner.runs())

    def cancel(self) -> None:
        self._session._call(self._inner.cancel())
