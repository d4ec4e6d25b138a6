"""``bgtransfer worker``: the command runs a real worker (exec'd: same pid) that stops
cleanly on SIGTERM, gives its task back, and says what is wrong without a store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from bgtransfer._store._postgres import PostgresStore
from bgtransfer.testing import FaultServer
from tests.fleet.fleet import eventually, rows_for


def _bgtransfer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bgtransfer", *args],
        capture_output=True, text=True, timeout=30, env=env, check=False,
    )  # fmt: skip


def test_the_worker_command_runs_and_stops_cleanly(
    pg: PostgresStore, pg_url: str, server: FaultServer, tmp_path: Path, key: str
) -> None:
    data = os.urandom(400_000)
    url = server.add(f"cli-{key}", data) + "?rate=100000"
    (row,) = rows_for([url], tmp_path)
    pg.insert(row)
    log = open(tmp_path / "w.log", "wb")  # noqa: SIM115 - the child writes it
    env = {k: v for k, v in os.environ.items() if k != "BGTRANSFER_STORE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bgtransfer", "worker", "--store", pg_url, "--name", "cli1",
         "--lease", "3"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    log.close()
    try:
        eventually(lambda: (pg.lease(row.id) or (None,))[0] == "cli1", 20, "cli1 claims it")
        assert [w.name for w in pg.workers()] == ["cli1"]
        assert [w.pid for w in pg.workers()] == [proc.pid]  # exec'd: the same process

        def progressed() -> bool:
            got = pg.get(row.id)
            return got is not None and got.snap.offset > 0

        eventually(progressed, 20, "a checkpoint")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    # Given back at a checkpoint: queued again, unleased, its worker gone from the list.
    got = pg.get(row.id)
    assert got is not None
    assert got.snap.phase.value == "queued"
    assert got.snap.detail == "queued (its worker stopped)"
    assert got.snap.offset > 0  # stopped at a checkpoint, resumable
    assert pg.lease(row.id) == (None, None, 1)
    assert pg.workers() == []
    assert "stopped; its tasks are back in the queue" in (tmp_path / "w.log").read_text()
    # The URL travelled in the environment, never on a command line.
    assert pg_url not in (tmp_path / "w.log").read_text()


def test_the_worker_command_needs_a_postgresql_store(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BGTRANSFER_STORE"}
    r = _bgtransfer("worker", env=env)
    assert r.returncode == 64
    assert "needs a PostgreSQL store" in r.stderr
    r = _bgtransfer("worker", env={**env, "BGTRANSFER_STORE": f"sqlite:///{tmp_path}/x.db"})
    assert r.returncode == 64


def test_an_unreachable_store_exits_75_for_systemd_to_retry(postgres: object) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BGTRANSFER_STORE"}
    r = _bgtransfer(
        "worker", "--store", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2", env=env
    )
    assert r.returncode == 75, r.stderr
    assert "cannot connect to the task store" in r.stderr


def test_the_worker_command_prints_a_systemd_unit() -> None:
    r = _bgtransfer("worker", "--store", "postgresql://bgt@db/bgt%20x", "--name", "w7",
                    "--systemd-unit")  # fmt: skip
    assert r.returncode == 0
    assert 'Environment="BGTRANSFER_STORE=postgresql://bgt@db/bgt%%20x"' in r.stdout
    assert "-m bgtransfer._fleet" in r.stdout
    assert "--name w7" in r.stdout
    assert "Type=notify" in r.stdout
