"""Sessions and tasks: the public Python API (asyncio and sync).

The API lives in small modules (``_views``: what both faces share; ``_async_session`` and
``_sync_session``: the two faces; ``_local`` and ``_remote``: the two backends). This module
keeps the import path other modules and tests use.
"""

from __future__ import annotations

from bgtransfer._async_session import AsyncSession, AsyncTask
from bgtransfer._local import STORE_NAME
from bgtransfer._options import DEFAULT_REQUEST_TIMEOUT, DEFAULT_RESOURCE_TIMEOUT
from bgtransfer._sync_session import Session, Task
from bgtransfer._views import EventStream, resolve_home

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
