"""The little of a DB-API connection the shared SQL code uses (sqlite3 and psycopg both fit).

Statements are written once, with ``?`` placeholders and SQL both engines accept; a backend
whose driver wants another style translates them in its connection (see ``_postgres``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

__all__ = ["Conn", "Cursor", "SQLBase"]


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...


class SQLBase:
    """What the shared mixins need from a backend."""

    _db: Conn
    # The driver's error for a broken UNIQUE constraint.
    _integrity_error: ClassVar[type[Exception]] = Exception
    # ``LIMIT`` meaning "no limit" (SQLite: -1; PostgreSQL: NULL).
    _no_limit: int | None = -1
    # Whether tasks carry a claim generation (fleet mode's fencing token).
    _fencing = False

    def _tx(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _limit(self, limit: int) -> int | None:
        return self._no_limit if limit < 0 else limit
