"""A store from its URL: ``sqlite:///path`` (the embedded default) or
``postgresql://user@host:port/db`` (fleet mode, needs the ``fleet`` extra)."""

from __future__ import annotations

from bgtransfer._exceptions import InvalidRequest, StoreError
from bgtransfer._store._base import Store

__all__ = ["open_store"]

_PG = ("postgresql://", "postgres://")


def open_store(url: str) -> Store:
    """Open (creating or migrating its schema on first use) the store ``url`` names."""
    if url.startswith(_PG):
        try:
            from bgtransfer._store._postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"a PostgreSQL store needs psycopg ({exc}): pip install 'bgtransfer[fleet]'"
            ) from exc
        return PostgresStore(url)
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if not path.startswith("/"):
            raise InvalidRequest(
                f"a SQLite store URL names an absolute path (sqlite:///path/to/file): {url!r}"
            )
        from bgtransfer._store._sqlite import SQLiteStore

        return SQLiteStore(path)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise InvalidRequest(
        f"unknown store {scheme!r}: use sqlite:///path or postgresql://user@host:port/db"
    )
