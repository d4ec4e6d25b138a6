"""Fleet fixtures: the session's PostgreSQL (tests/store/pg.py), a fresh schema per test,
a store handle, and the worker processes (killed at teardown)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bgtransfer._store._postgres import PostgresStore
from tests.fleet.fleet import Fleet, show_logs
from tests.store.pg import pg_url, postgres  # noqa: F401  (fixtures)


@pytest.fixture
def pg(pg_url: str) -> Iterator[PostgresStore]:  # noqa: F811
    store = PostgresStore(pg_url)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def fleet(pg_url: str, tmp_path: Path) -> Iterator[Fleet]:  # noqa: F811
    logs = tmp_path / "logs"
    logs.mkdir()
    f = Fleet(pg_url, logs)
    try:
        yield f
    finally:
        f.close()
        show_logs(f)  # shown by pytest only when the test failed
