"""A worker whose disk is full (here: a file size limit, RLIMIT_FSIZE, as the engine's own
disk-full test) gives its task back to the queue with a start time and the reason, instead
of keeping it suspended where nobody resumes it; another worker with room goes on from the
committed bytes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bgtransfer._models import Phase
from bgtransfer._store._postgres import PostgresStore
from bgtransfer.testing import FaultServer
from tests.fleet.fleet import Fleet, eventually, rows_for
from tests.fleet.pace import one, running

LIMIT = 1 << 20


def test_a_task_its_worker_cannot_write_goes_back_to_the_queue_for_another(
    fleet: Fleet,
    pg: PostgresStore,
    server: FaultServer,
    tmp_path: Path,
    key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BGTRANSFER_FULL_RETRY", "2")
    data = os.urandom(3 << 20)
    url = server.add(f"full-{key}", data)
    out = tmp_path / "out"
    out.mkdir()
    (row,) = rows_for([url], out)
    fleet.start("small", wrap=("prlimit", f"--fsize={LIMIT}", "--"))
    running(fleet, "small")
    pg.insert_many([row])

    def given_back() -> bool:
        got = pg.get(row.id)
        return got is not None and "disk was full" in got.snap.detail

    eventually(given_back, 20, "the task given back")
    sent = time.time()
    got = pg.get(row.id)
    assert got is not None
    assert got.snap.phase is Phase.QUEUED  # runnable again: not suspended
    assert got.snap.detail.startswith("queued until "), got.snap.detail
    assert "File too large" in got.snap.detail, got.snap.detail
    assert 0 < got.snap.offset <= LIMIT  # its bytes were kept
    owner, nb = one(pg, "SELECT lease_owner, not_before FROM tasks WHERE id=?", row.id)
    assert owner is None
    assert sent - 1 < nb <= sent + 2.5  # not before BGTRANSFER_FULL_RETRY from then
    assert "cannot write it; given back until" in fleet.log("small")
    events = [(e.state, e.phase) for e in pg.events_since("fleet", 0, limit=100)]
    assert events[-2:] == [("suspended", "suspended"), ("running", "queued")]
    assert fleet.stop("small") == 0
    fleet.start("roomy")
    fleet.wait_done(pg, [row.id], 30)
    assert Path(row.path).read_bytes() == data
    last = server.requests(f"/r/full-{key}")[-1]
    assert last.range is not None
    assert last.range.startswith("bytes=")  # resumed
    assert int(last.range[6:].rstrip("-")) > 0
    assert fleet.stop("roomy") == 0
