"""A real PostgreSQL for the tests, from Debian's ``postgresql`` package.

``initdb`` into a temporary directory and ``pg_ctl start`` on a free port of 127.0.0.1 (its
unix socket in that directory too), as an unprivileged user: PostgreSQL refuses to run as
root, so under root the server runs as ``nobody`` (uid 65534) on a directory it owns. One
server per test session; each test gets a database of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bgtransfer.testing._postgres import (
    NOBODY,
    PostgresServer,
    as_server_user,
    find_bindir,
    start_postgres,
)

__all__ = [
    "NOBODY",
    "PostgresServer",
    "as_server_user",
    "find_bindir",
    "pg_url",
    "postgres",
    "start_postgres",
]


def _missing() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]')"
    bindir = find_bindir()
    if bindir is None or not os.access(os.path.join(bindir, "pg_ctl"), os.X_OK):
        return "PostgreSQL is not installed (apt-get install postgresql)"
    return None


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server; skipped when it cannot exist here, except under
    CI=true, where a missing PostgreSQL is a failure (the PostgreSQL tests are not optional)."""
    why = _missing()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    bindir = find_bindir()
    assert bindir is not None
    yield from start_postgres(bindir)


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh schema on the session's server (a store's own namespace), dropped after."""
    url = postgres.create_schema()
    try:
        yield url
    finally:
        postgres.drop_schema(url)
