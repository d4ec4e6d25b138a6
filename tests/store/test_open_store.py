"""Stores by URL: the scheme picks the backend, anything else is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._store._open import open_store
from bgtransfer._store._postgres import PostgresStore
from bgtransfer._store._sqlite import SQLiteStore
from bgtransfer._tasks import build_row


def test_a_sqlite_url_opens_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = open_store(f"sqlite://{path}")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path == str(path)
        store.insert(build_row("s", "http://h/f", tmp_path / "f", background=True))
    finally:
        store.close()
    assert path.stat().st_size > 0


def test_a_postgresql_url_opens_the_database(pg_url: str, tmp_path: Path) -> None:
    store = open_store(pg_url)
    try:
        assert isinstance(store, PostgresStore)
        row = build_row("s", "http://h/f", tmp_path / "f", background=True)
        store.insert(row)
        assert store.get(row.id) is not None
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://h/db", "unknown store 'mysql'"),
        ("sqlite://relative.db", "absolute path"),
        ("/just/a/path", "unknown store"),
    ],
)
def test_other_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        open_store(url)
