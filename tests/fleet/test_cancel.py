"""Cancel of a task no worker holds, in fleet mode (real workers, real PostgreSQL, the
project's tus and IETF-draft servers): an upload's resource is deleted on its server (the
termination a worker's engine sends, as for a task it holds), and a cancel whose client died
half-way is finished by a worker."""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import bgtransfer
from bgtransfer import TaskState
from bgtransfer._exceptions import Cancelled
from bgtransfer._models import Phase
from bgtransfer._protocol import _machine as M
from bgtransfer._store._postgres import PostgresStore
from bgtransfer._storeclient import _control
from bgtransfer.testing import FaultServer
from tests.fleet.fleet import Fleet, eventually

KiB = 1 << 10


def _suspended_midway(pg: PostgresStore, task: bgtransfer.Task) -> None:
    """Suspend a task a worker runs, once it has sent or fetched some bytes: the worker
    applies it and gives the task back (unheld)."""
    eventually(lambda: (pg.get(task.id) or task).snap.offset > 0, 20, "bytes moved")  # type: ignore[union-attr]
    task.suspend()
    eventually(lambda: (pg.lease(task.id) or ("x",))[0] is None, 10, "given back")
    assert task.state is TaskState.SUSPENDED


@pytest.mark.parametrize(("protocol", "worker_alive"), [("tus", True), ("ietf", False)])
def test_cancel_of_an_unheld_resumable_upload_deletes_it_on_its_server(
    fleet: Fleet, pg: PostgresStore, pg_url: str, server: FaultServer, tmp_path: Path,
    key: str, protocol: str, worker_alive: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    path = tmp_path / f"c-{protocol}-{key}.bin"
    path.write_bytes(os.urandom(512 * KiB))
    url = server.url("/tus/") if protocol == "tus" else server.url(f"/ietf/{path.name}")
    fleet.start("w1")
    with bgtransfer.Session("app", home=tmp_path / "home", store=pg_url) as s:
        task = s.upload(path, url, protocol=protocol, chunk_size=64 * KiB, max_rate="128K")
        _suspended_midway(pg, task)
        row = pg.get(task.id)
        assert row is not None
        resource = row.snap.upload_url
        assert resource is not None
        target = urlsplit(resource).path
        if not worker_alive:
            assert fleet.stop("w1") == 0
            monkeypatch.setattr(_control, "CONTROL_WAIT", 1.0)
            path.unlink()  # the source is not needed to cancel
        task.cancel()
        if not worker_alive:
            # Nobody to send the DELETE yet: the cancel is recorded, handed to the workers.
            assert task.state is TaskState.CANCELING
            assert not [r for r in server.requests(target) if r.method == "DELETE"]
            fleet.start("w2")
            eventually(lambda: task.state is TaskState.COMPLETED, 20, "a worker finishes it")
        assert task.state is TaskState.COMPLETED
        assert isinstance(task.error, Cancelled)
    eventually(
        lambda: [r for r in server.requests(target) if r.method == "DELETE"] != [], 10, "DELETE"
    )
    deletes = [r for r in server.requests(target) if r.method == "DELETE"]
    assert len(deletes) == 1
    if protocol == "tus":
        assert deletes[0].headers["tus-resumable"] == "1.0.0"
    with pytest.raises(KeyError):  # the server dropped the upload
        (server.tus_data if protocol == "tus" else server.ietf_data)(path.name)
    # Released by the worker that finished it.
    eventually(lambda: (pg.lease(task.id) or ("x",))[0] is None, 10, "released")


def test_a_cancel_whose_client_died_before_its_cleanup_is_finished_by_a_worker(
    fleet: Fleet, pg: PostgresStore, pg_url: str, server: FaultServer, tmp_path: Path, key: str
) -> None:
    url = server.add(f"cancel-{key}", os.urandom(400 * KiB)) + "?rate=100000"
    fleet.start("w1")
    with bgtransfer.Session("app", home=tmp_path / "home", store=pg_url) as s:
        task = s.download(url, tmp_path / "d.bin")
        _suspended_midway(pg, task)
        row = pg.get(task.id)
        assert row is not None
        assert Path(row.partial).exists()
        # The client's cancel transaction, then nothing: it died before removing the
        # partial (its cleanup lease, taken a minute ago, has run out).
        got = pg.control_task(
            task.id, None, _control.decide(M.CancelRequested()), now=time.time() - 60
        )
        assert got.outcome == "applied"
        assert got.row.snap.phase is Phase.CANCELING
        eventually(lambda: task.state is TaskState.COMPLETED, 20, "a worker finishes it")
        assert isinstance(task.error, Cancelled)
    assert not Path(row.partial).exists()
    assert not any(p.name.startswith("d.bin") for p in tmp_path.iterdir())
