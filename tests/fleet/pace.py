"""Small helpers of the fleet pacing and status tests."""

from __future__ import annotations

from typing import Any

from bgtransfer._store._postgres import PostgresStore
from tests.fleet.fleet import Fleet, eventually

__all__ = ["one", "running"]


def running(fleet: Fleet, *names: str) -> None:
    """Wait (bounded) until each worker claims from the queue."""
    for name in names:

        def claiming(n: str = name) -> bool:
            return "claiming from the queue" in fleet.log(n)

        eventually(claiming, 20, f"{name} runs")


def one(pg: PostgresStore, sql: str, *args: Any) -> tuple[Any, ...]:
    """The one row a query answers."""
    row = pg._db.execute(sql, args).fetchone()
    assert row is not None
    return tuple(row)
