"""Sessions and tasks: the public Python API (asyncio and sync).

The face is this package: ``_views`` (what both faces share: the task view, ``tasks()``
queries, the event stream, the backend interface), ``_async`` and ``_sync`` (the two faces),
``_local`` and ``_remote`` (the two backends: the engine in this process, or the home's
daemon; in fleet mode ``_remote`` speaks the same protocol to a PostgreSQL store, see
``bgtransfer._storeclient``). What a request is lives below it, in ``bgtransfer._options``
(the options and their defaults, the task body), ``bgtransfer._tasks`` (rows) and
``bgtransfer._home``.
"""

from __future__ import annotations

from bgtransfer._home import resolve_home
from bgtransfer._options import DEFAULT_REQUEST_TIMEOUT, DEFAULT_RESOURCE_TIMEOUT
from bgtransfer._session._async import AsyncSession, AsyncTask
from bgtransfer._session._local import STORE_NAME
from bgtransfer._session._sync import Session, Task
from bgtransfer._session._views import EventStream

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_RESOURCE_TIMEOUT",
    "STORE_NAME",
    "AsyncSession",
    "AsyncTask",
    "EventStream",
    "Session",
    "Task",
    "resolve_home",
]
