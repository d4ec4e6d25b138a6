"""The store backends the conformance suite runs against, each behind one small interface:
open a store (again: a second connection, or after a restart), and make one at an older
schema version so that opening it migrates."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Protocol

from bgtransfer._store._base import Store, TaskRow
from bgtransfer._store._sqlite import SQLiteStore


class Backend(Protocol):
    name: str

    def open(self) -> Store:
        """A store on the backend's database (the same one every call)."""
        ...

    def make_old(self, row: TaskRow) -> None:
        """Turn the database into one an older bgtransfer left, holding ``row``."""
        ...

    def schema_version(self) -> tuple[int, int]:
        """(the database's schema version, the version this bgtransfer writes)."""
        ...


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, tmp: Path) -> None:
        self.path = str(tmp / "store.sqlite3")

    def open(self) -> SQLiteStore:
        return SQLiteStore(self.path)

    def make_old(self, row: TaskRow) -> None:
        store = self.open()
        store.insert(row)
        store.close()
        # What version 8 had: no queue order, no start times, no scheduling tables.
        con = sqlite3.connect(self.path)
        for stmt in (
            "DROP INDEX tasks_queue",
            "DROP INDEX tasks_not_before",
            "ALTER TABLE tasks DROP COLUMN priority",
            "ALTER TABLE tasks DROP COLUMN not_before",
            "DROP TABLE jobs",
            "DROP TABLE job_runs",
            "DROP TABLE limits",
            "DROP TABLE cooldowns",
            "PRAGMA user_version=8",
        ):
            con.execute(stmt)
        con.commit()
        con.close()

    def schema_version(self) -> tuple[int, int]:
        from bgtransfer._store._schema import SCHEMA_VERSION

        con = sqlite3.connect(self.path)
        try:
            (version,) = con.execute("PRAGMA user_version").fetchone()
        finally:
            con.close()
        return int(version), SCHEMA_VERSION


class PostgresBackend:
    name = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url

    def open(self) -> Store:
        from bgtransfer._store._postgres import PostgresStore

        return PostgresStore(self.url)

    def make_old(self, row: TaskRow) -> None:
        import psycopg

        store = self.open()
        store.insert(row)
        store.close()
        # What version 1 had: no leases, fencing tokens, event notifications or workers.
        with psycopg.connect(self.url, autocommit=True) as con:
            con.execute("DROP TRIGGER tasks_progress_notify ON tasks")  # version 6
            con.execute("DROP FUNCTION bgtransfer_progress_notify()")
            con.execute("DROP TRIGGER cooldowns_notify ON cooldowns")  # version 5
            con.execute("DROP TRIGGER limits_notify ON limits")
            con.execute("DROP FUNCTION bgtransfer_pace_notify()")
            con.execute("DROP TRIGGER tasks_queue_notify ON tasks")  # version 4
            con.execute("DROP FUNCTION bgtransfer_queue_notify()")
            con.execute("DROP TRIGGER tasks_origin ON tasks")
            con.execute("DROP FUNCTION bgtransfer_set_origin()")
            con.execute("DROP FUNCTION bgtransfer_origin(TEXT)")
            con.execute("ALTER TABLE tasks DROP COLUMN origin")
            # ... nor control requests (version 3)
            con.execute("DROP TRIGGER tasks_control_done ON tasks")
            con.execute("DROP FUNCTION bgtransfer_control_done()")
            con.execute("ALTER TABLE tasks DROP COLUMN control")  # and its index
            con.execute("DROP INDEX tasks_lease")
            con.execute("DROP TRIGGER events_notify ON events")
            con.execute("DROP FUNCTION bgtransfer_event_notify()")
            con.execute("DROP TABLE workers")
            for column in ("lease_owner", "lease_expires", "generation"):
                con.execute(f"ALTER TABLE tasks DROP COLUMN {column}")
            con.execute("UPDATE bgtransfer_schema SET version=1")

    def schema_version(self) -> tuple[int, int]:
        import psycopg

        from bgtransfer._store._pgschema import SCHEMA_VERSION

        with psycopg.connect(self.url, autocommit=True) as con:
            row = con.execute("SELECT version FROM bgtransfer_schema").fetchone()
        assert row is not None
        return int(row[0]), SCHEMA_VERSION
