"""A real PostgreSQL for the tests, from Debian's ``postgresql`` package.

``initdb`` into a temporary directory and ``pg_ctl start`` on a free port of 127.0.0.1 (its
unix socket in that directory too), as an unprivileged user: PostgreSQL refuses to run as
root, so under root the server runs as ``nobody`` (uid 65534) on a directory it owns. One
server per test session; each test gets a database of its own.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

__all__ = ["PostgresServer", "find_bindir", "pg_url", "postgres", "start_postgres"]

NOBODY = 65534


def find_bindir() -> str | None:
    """The newest installed PostgreSQL's bin directory (or $BGTRANSFER_PG_BINDIR)."""
    env = os.environ.get("BGTRANSFER_PG_BINDIR")
    if env:
        return env
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    bindir: str
    root: str  # the temporary directory: data, socket, log
    port: int

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def create_schema(self) -> str:
        """A fresh, empty schema in the server's database, as the URL of a connection whose
        tables land there (its search_path): much cheaper than a database per test."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True) as con:
            con.execute(f'CREATE SCHEMA "{name}"')
        return f"{self.url}?options=-csearch_path%3D{name}"

    def drop_schema(self, url: str) -> None:
        import psycopg

        name = url.rsplit("%3D", 1)[1]
        with psycopg.connect(self.url, autocommit=True) as con:
            con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(
        _as_server_user(cmd), capture_output=True, text=True, timeout=120, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed ({r.returncode}): {r.stdout}\n{r.stderr}")


def start_postgres(bindir: str) -> Iterator[PostgresServer]:
    """Start a server, yield it, stop it and delete its files (a generator for a fixture)."""
    root = tempfile.mkdtemp(prefix="bgtransfer-pg-")
    if os.geteuid() == 0:
        os.chown(root, NOBODY, NOBODY)
    os.chmod(root, 0o700)
    data = os.path.join(root, "data")
    port = _free_port()
    # Test speed only: the server is thrown away with the session, never crash-tested.
    opts = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off"
    try:
        _run(
            [f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync",
             "--encoding=UTF8", "--locale=C"],
            "initdb",
        )  # fmt: skip
        _run(
            [f"{bindir}/pg_ctl", "-D", data, "-l", os.path.join(root, "log"), "-o", opts,
             "-w", "-t", "60", "start"],
            "pg_ctl start",
        )  # fmt: skip
        yield PostgresServer(bindir, root, port)
    finally:
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            subprocess.run(
                _as_server_user([f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)


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
