"""A submit's rows are started as they were inserted, not decoded back from the store
(issue 19): that is only right if a row reads back equal to what was inserted, for every
kind of option a submit can carry."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bgtransfer._requests import build_item
from bgtransfer._store._base import TaskRow
from bgtransfer._store._sqlite import SQLiteStore

BODIES = [
    {},
    {
        "headers": [["X-A", "1"], ["Accept", "*/*"]],
        "sha256": "a" * 64,
        "overwrite": True,
        "max_attempts": 3,
        "retry_for": 30.5,
        "on_complete": ["/bin/true", "x y"],
        "metadata": {"k": [1, 2, {"n": None}]},
        "start_at": 1.5e9,
        "max_rate": "4M",
        "priority": "high",
        "segments": 4,
        "max_bytes": 10_000,
        "low_speed_limit": 10,
        "low_speed_time": 5.0,
        "checksums": {"sha512": "b" * 128},
        "urls": ["http://127.0.0.1:9/f", "http://127.0.0.1:9/b"],
    },
]


@pytest.mark.parametrize("extra", BODIES)
def test_a_submitted_row_reads_back_equal(tmp_path: Path, extra: dict[str, object]) -> None:
    store = SQLiteStore(str(tmp_path / "s.sqlite3"))
    try:
        body = {"session": "s", "url": "http://127.0.0.1:9/f", "path": str(tmp_path / "f")}
        body |= extra  # type: ignore[arg-type]
        built = build_item(store.find_key, {**body, "idempotency_key": "k"}, None)
        assert isinstance(built, TaskRow)
        built.owner = "daemon-token"
        store.insert_many([built])
        back = store.get(built.id)
        assert back is not None
        assert dataclasses.asdict(back) == dataclasses.asdict(built)
        assert back == built
    finally:
        store.close()


def test_next_queued_takes_known_rows_as_they_are_and_reads_the_rest(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.sqlite3"))
    try:
        rows = []
        for i in range(4):
            body = {
                "session": "s",
                "url": f"http://127.0.0.1:9/{i}",
                "path": str(tmp_path / f"{i}"),
            }
            row = build_item(store.find_key, {**body, "idempotency_key": f"k{i}"}, None)
            assert isinstance(row, TaskRow)
            rows.append(row)
        store.insert_many(rows)
        known = {rows[1].id: rows[1], rows[3].id: rows[3]}
        got = store.next_queued(
            background=True, owner=None, limit=3, exclude={rows[0].id}, known=known
        )
        assert [r.id for r in got] == [r.id for r in rows[1:]]  # oldest first, 0 excluded
        assert got[0] is rows[1]
        assert got[2] is rows[3]
        assert got[1] is not rows[2]
        assert got[1] == rows[2]
    finally:
        store.close()
