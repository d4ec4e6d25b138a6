"""A throwaway local PostgreSQL from Debian's ``postgresql`` package, for the tests, the
fleet benchmark and ``make fleet-demo``.

``initdb`` into a temporary directory and ``pg_ctl start`` on a free port of 127.0.0.1 (its
unix socket in that directory too), as an unprivileged user: PostgreSQL refuses to run as
root, so under root the server runs as ``nobody`` (uid 65534) on a directory it owns.
Nothing here is for production: ``--auth=trust`` on loopback, deleted when stopped.
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

__all__ = [
    "NOBODY",
    "PostgresServer",
    "as_server_user",
    "find_bindir",
    "free_port",
    "start_postgres",
]

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


def free_port() -> int:
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


def as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(
        as_server_user(cmd), capture_output=True, text=True, timeout=120, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed ({r.returncode}): {r.stdout}\n{r.stderr}")


def start_postgres(bindir: str, *, durable: bool = False) -> Iterator[PostgresServer]:
    """Start a server, yield it, stop it and delete its files (a generator for a fixture).

    ``durable``: PostgreSQL's own defaults (fsync on), for what measures or shows
    durability; else fsync off, for test speed (the server is thrown away, never
    crash-tested)."""
    root = tempfile.mkdtemp(prefix="bgtransfer-pg-")
    if os.geteuid() == 0:
        os.chown(root, NOBODY, NOBODY)
    os.chmod(root, 0o700)
    data = os.path.join(root, "data")
    port = free_port()
    opts = f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=200"
    if not durable:
        opts += " -c fsync=off -c full_page_writes=off"
    try:
        _run(
            [f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust",
             *(() if durable else ("--no-sync",)), "--encoding=UTF8", "--locale=C"],
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
                as_server_user([f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)
