"""Store fixtures: ``backend`` and ``store`` run a test once per backend (SQLite on a
temporary file; PostgreSQL on the session's server, a fresh database per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bgtransfer._store._base import Store
from tests.store.backends import Backend, PostgresBackend, SQLiteBackend
from tests.store.pg import pg_url, postgres  # noqa: F401  (fixtures)

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SQLiteBackend(tmp_path)
    return PostgresBackend(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    s = backend.open()
    try:
        yield s
    finally:
        s.close()
