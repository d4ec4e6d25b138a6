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


def test_segments_round_trip_and_a_version_6_store_reads_without_them(tmp_path: Path) -> None:
    from bgtransfer._tasks import build_row, row_from_wire, row_to_wire

    path = tmp_path / "seg.db"
    store = SQLiteStore(str(path))
    try:
        row = build_row("s", "http://h/f", tmp_path / "f", background=False, segments=3)
        store.insert(row)
        snap = row.snap
        snap.offset, snap.total = 30, 3 << 20
        snap.segments = ((0, 10, 1 << 20), (1 << 20, (1 << 20) + 20, 2 << 20), (2 << 20,) * 3)
        store.save(row.id, snap, wall_time=1.0)
        got = store.get(row.id)
        assert got is not None
        assert got.spec.segments == 3
        assert got.snap.segments == snap.segments
        assert row_from_wire(row_to_wire(got)).snap.segments == snap.segments
        # Rows written before segments existed (no key in the JSON) read as unsegmented.
        store._db.execute('UPDATE tasks SET response=\'{"status": null, "headers": []}\'')
        store._db.execute("PRAGMA user_version=6")
    finally:
        store.close()
    store = SQLiteStore(str(path))
    try:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        again = store.get(row.id)
        assert again is not None
        assert again.snap.segments == ()
    finally:
        store.close()


def test_reason_phrase_and_response_path_round_trip(tmp_path: Path) -> None:
    from bgtransfer._tasks import build_upload_row, row_from_wire, row_to_wire

    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    store = SQLiteStore(str(tmp_path / "r.db"))
    try:
        row = build_upload_row(
            "s", src, "http://h/up", background=False, response_path=tmp_path / "answer"
        )
        store.insert(row)
        row.snap.response_status, row.snap.response_reason = 201, "Made It"
        store.save(row.id, row.snap, wall_time=1.0)
        got = store.get(row.id)
        assert got is not None
        assert got.snap.response_reason == "Made It"
        assert got.spec.response_path == str(tmp_path / "answer")
        wired = row_from_wire(row_to_wire(got))
        assert wired.snap.response_reason == "Made It"
        assert wired.spec.response_path == str(tmp_path / "answer")
        # Rows written before reasons were kept read as None.
        store._db.execute('UPDATE tasks SET response=\'{"status": 201, "headers": []}\'')
        again = store.get(row.id)
        assert again is not None
        assert again.snap.response_reason is None
    finally:
        store.close()
