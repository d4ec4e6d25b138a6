"""The SQLite store: schema versions, migration, refusal of newer schemas, durability settings."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bgtransfer import StoreError
from bgtransfer._store._sqlite import SCHEMA_VERSION, SQLiteStore


def test_fresh_store_settings(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    try:
        db = store._db
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.integrity_ok()
    finally:
        store.close()
    assert (tmp_path / "s.db").stat().st_mode & 0o777 == 0o600


def test_version_1_store_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = SQLiteStore(str(path))
    store.close()
    con = sqlite3.connect(path)
    # Make it what version 1 created: no response column, no attempts table.
    con.execute("ALTER TABLE tasks DROP COLUMN response")
    con.execute("DROP TABLE attempts")
    con.execute("DROP INDEX tasks_phase")
    con.execute("DROP INDEX tasks_created")
    con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()
    store = SQLiteStore(str(path))
    try:
        cols = [r[1] for r in store._db.execute("PRAGMA table_info(tasks)")]
        assert "response" in cols
        assert store.list() == []
    finally:
        store.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer than this"):
        SQLiteStore(str(path))


def test_corrupt_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the task store"):
        SQLiteStore(str(path))
