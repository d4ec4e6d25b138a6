"""Loaded by the strace ordering audit's processes (on PYTHONPATH, BGTRANSFER_AUDIT=1).

Before every snapshot the store writes, announce which partial file it names and the offset
it commits, as a ``write`` to /dev/null that strace records in order with the file's own
writes and fsyncs. The audit then checks the promise itself (a committed offset never names
bytes that are not yet fsynced), not a proxy for it: with group commit the writer thread's
WAL fsync may land while the loop already writes bytes past the committed offset.
"""

from __future__ import annotations

import os
from typing import Any

if os.environ.get("BGTRANSFER_AUDIT") == "1":
    from bgtransfer._store import _sqlite

    _fd = os.open(os.devnull, os.O_WRONLY)

    def _announce(store: Any, task_id: str, snap: Any) -> None:
        if snap is None:
            return
        row = store._db.execute("SELECT partial FROM tasks WHERE id=?", (task_id,)).fetchone()
        if row and row[0]:
            os.write(_fd, f"AUDIT-SAVE {snap.offset} {row[0]}".encode())

    _save, _save_in_tx = _sqlite.SQLiteStore.save, _sqlite.SQLiteStore.save_in_tx

    def save(self: Any, task_id: str, snap: Any, **kw: Any) -> Any:
        _announce(self, task_id, snap)
        return _save(self, task_id, snap, **kw)

    def save_in_tx(self: Any, task_id: str, snap: Any, **kw: Any) -> Any:
        _announce(self, task_id, snap)
        return _save_in_tx(self, task_id, snap, **kw)

    _sqlite.SQLiteStore.save = save  # type: ignore[method-assign]
    _sqlite.SQLiteStore.save_in_tx = save_in_tx  # type: ignore[method-assign]
