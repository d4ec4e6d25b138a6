"""``insert_in_tx`` (the daemon's submits in the group commit, issue 19), on every backend:
inside one transaction, each call is all or nothing and a refused one leaves the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgtransfer._exceptions import DestinationError
from bgtransfer._store._base import DuplicateKey, Store, TaskRow
from bgtransfer._tasks import build_row


def _row(tmp: Path, name: str, **kw: object) -> TaskRow:
    return build_row("s", f"http://h/{name}", tmp / name, background=True, **kw)  # type: ignore[arg-type]


def test_a_refused_insert_rolls_back_only_its_own_rows(store: Store, tmp_path: Path) -> None:
    taken = _row(tmp_path, "taken", idempotency_key="k")
    store.insert(taken)
    first = [_row(tmp_path, "a"), _row(tmp_path, "b")]
    by_path = [_row(tmp_path, "c"), _row(tmp_path, "taken")]  # the path of a live task
    by_key = [_row(tmp_path, "d"), _row(tmp_path, "e", idempotency_key="k")]
    last = [_row(tmp_path, "f")]
    with store.transaction():
        store.insert_in_tx(first)
        with pytest.raises(DestinationError):
            store.insert_in_tx(by_path)
        with pytest.raises(DuplicateKey):
            store.insert_in_tx(by_key)
        store.insert_in_tx(last)
    names = sorted(Path(r.path).name for r in store.list("s"))
    assert names == ["a", "b", "f", "taken"]  # c and d went with their refused twins
