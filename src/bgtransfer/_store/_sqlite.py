"""SQLite store: WAL, synchronous=FULL, explicit transactions, versioned schema.

FULL makes every acknowledged state change durable before the caller acts on it (renaming the
file, answering a client); progress commits are batched by the engine, so the fsync cost of
FULL is paid once per checkpoint, not per chunk.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import ClassVar

from bgtransfer._exceptions import StoreError, StoreFull
from bgtransfer._store._base import OPEN_ATTEMPT, EventRecord
from bgtransfer._store._codec import event_record
from bgtransfer._store._schema import SCHEMA_VERSION, migrate
from bgtransfer._store._sql import SQLStore
from bgtransfer._trust import check_private_file, open_private

# OPEN_ATTEMPT, EventRecord and event_record were defined here; importers keep working.
__all__ = [
    "OPEN_ATTEMPT",
    "SCHEMA_VERSION",
    "EventRecord",
    "SQLiteStore",
    "event_record",
]


class SQLiteStore(SQLStore):
    _db: sqlite3.Connection
    _integrity_error: ClassVar[type[Exception]] = sqlite3.IntegrityError
    _not_before_index = "INDEXED BY tasks_not_before"

    def __init__(self, path: str, *, busy_timeout: float = 10.0) -> None:
        self._path = path
        try:
            # SQLite opens its files by name and follows links: refuse planted ones first,
            # by lstat (an existing store is never opened here, see below).
            for suffix in ("", "-wal", "-shm", "-journal"):
                check_private_file(path + suffix)
            # Create it private, but never open and close it when it exists: closing any
            # descriptor of a file drops every POSIX lock the process holds on it, SQLite's
            # too (the engine's second connection did that to the first), and another
            # process closing its connection then deletes the WAL under the daemon, taking
            # every later commit with it.
            try:
                fd = open_private(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                pass
            else:
                os.close(fd)
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the task store {path}: {exc}") from exc

    @property
    def path(self) -> str:
        return self._path

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the task store {self.path} has schema version {version}, newer than this "
                f"bgtransfer understands ({SCHEMA_VERSION}); upgrade bgtransfer"
            )
        with self._tx():
            migrate(self._db, version)

    def transaction(self) -> AbstractContextManager[None]:
        """One write transaction for several ``*_in_tx`` calls (the engine's group commit)."""
        return self._tx()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        # BEGIN IMMEDIATE takes the write lock up front: a deferred BEGIN can fail with
        # SQLITE_BUSY when it upgrades, after work has been done.
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            full = self._full(exc)
            if full is None:
                raise
            raise full from exc
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException as exc:
            # A COMMIT that failed (disk full) can leave the transaction open: the next
            # BEGIN would fail for good.
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                full = self._full(exc)
                if full is not None:
                    raise full from exc
            raise

    def _full(self, exc: sqlite3.OperationalError) -> StoreFull | None:
        """StoreFull when ``exc`` means the store's disk has no room."""
        code = getattr(exc, "sqlite_errorcode", 0)
        if code != sqlite3.SQLITE_FULL:
            if code & 0xFF != sqlite3.SQLITE_IOERR:
                return None
            try:  # a write error of some other name: full only if the disk is
                st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
            except OSError:
                return None
            if st.f_bavail * st.f_frsize >= 1 << 20:
                return None
        return StoreFull(
            f"the disk of the task store {self.path} is full ({exc}): tasks are suspended "
            "until space is freed"
        )

    def integrity_ok(self) -> bool:
        (result,) = self._db.execute("PRAGMA integrity_check").fetchone()
        return bool(result == "ok")

    def close(self) -> None:
        self._db.close()
