"""`bgtransfer --store postgresql://... <command>`: the CLI straight on a real PostgreSQL, no
daemon. Most tests call the CLI's ``main`` in this process (each command still makes its
own client and event loop); one runs the real ``bgtransfer`` executable."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bgtransfer._daemon._paths import socket_path
from bgtransfer._store._postgres import PostgresStore
from bgtransfer.cli import main
from bgtransfer.testing import FaultServer, gen_bytes
from tests.api.fleet import claim_one, fetch_and_complete
from tests.store.pg import pg_url, postgres  # noqa: F401 - fixtures

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def pg(pg_url: str) -> Iterator[PostgresStore]:  # noqa: F811
    store = PostgresStore(pg_url)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def run(
    pg_url: str,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Run]:
    home = tmp_path / "home"

    def call(*args: str) -> tuple[int, str, str]:
        code = main(["--home", str(home), "--store", pg_url, *args])
        out, err = capsys.readouterr()
        return code, out, err

    yield call
    assert not os.path.exists(socket_path(str(home)))  # no daemon was ever started


def test_add_ls_show_wait_rm_through_postgres(
    run: Run, pg: PostgresStore, server: FaultServer, tmp_path: Path, key: str
) -> None:
    code, out, err = run("add", server.url(f"/gen/3000?key={key}"), "-o", str(tmp_path / "a"))
    assert code == 0, err
    task_id = out.strip()
    row = pg.get(task_id)
    assert row is not None
    assert row.background
    code, out, _ = run("ls", "--json")
    assert code == 0
    assert [t["id"] for t in json.loads(out)] == [task_id]
    assert json.loads(out)[0]["state"] == "running"
    code, out, _ = run("ls")
    assert out.split("\t")[:2] == [task_id[:8], "running"]
    code, out, _ = run("show", task_id[:6], "--json")
    assert code == 0
    assert json.loads(out)["history"] == []
    claim = claim_one(pg)
    worker = threading.Thread(target=fetch_and_complete, args=(pg, claim), kwargs={"delay": 0.3})
    worker.start()
    try:
        code, out, err = run("wait", task_id[:8], "--timeout", "20", "--json")
    finally:
        worker.join(10)
    assert code == 0, err
    assert json.loads(out)["state"] == "completed"
    assert (tmp_path / "a").read_bytes() == gen_bytes(3000)
    code, out, err = run("rm", task_id[:8])
    assert code == 0, err
    assert pg.get(task_id) is None


def test_suspend_resume_cancel_and_events_through_postgres(
    run: Run, pg: PostgresStore, server: FaultServer, tmp_path: Path
) -> None:
    _, out, _ = run("add", server.url("/gen/10"), "-o", str(tmp_path / "s"))
    task_id = out.strip()
    code, _, err = run("suspend", task_id[:8])
    assert code == 0
    assert "suspended" in err
    code, _, err = run("resume", task_id[:8])
    assert code == 0
    assert "queued" in err
    code, _, err = run("cancel", task_id[:8])
    assert code == 0
    assert "cancelled" in err
    code, _, err = run("resume", task_id[:8])
    assert code == 8  # not possible in its state, as with the daemon
    code, out, _ = run("events", "--since", "0", "--no-follow")
    assert code == 0
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x.get("state") for x in lines[:-1]] == [
        "suspended", "running", "canceling", "completed",
    ]  # fmt: skip
    assert lines[-1] == {"kind": "replay_end", "cursor": lines[-2]["cursor"]}
    code, out, _ = run("ls", "--state", "completed", "--json")
    assert json.loads(out)[0]["error_code"] == "cancelled"
    _, out, _ = run("add", server.url("/gen/11"), "-o", str(tmp_path / "still"))
    code, out, _ = run("prune", "--completed", "--json")
    assert code == 0
    assert json.loads(out) == [task_id]  # the queued one stays
    assert pg.get(task_id) is None


def test_status_shows_workers_and_queue(
    run: Run, pg: PostgresStore, server: FaultServer, tmp_path: Path
) -> None:
    for n in range(3):
        run("add", server.url(f"/gen/{n + 1}"), "-o", str(tmp_path / f"q{n}"))
    pg.heartbeat("worker-a", "host-1", 4242)
    pg.claim("worker-a", 60.0, limit=1)
    code, out, err = run("status", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["queue_depth"] == 2
    assert info["tasks"] == {"running": 3}
    assert [(w["name"], w["host"], w["pid"], w["tasks_held"]) for w in info["workers"]] == [
        ("worker-a", "host-1", 4242, 1)
    ]
    assert info["workers"][0]["seen_ago"] >= 0
    code, out, _ = run("status")
    assert code == 0
    assert "queue: 2 waiting for a worker" in out
    assert out.splitlines()[-1].split()[:3] == ["worker-a", "host-1", "4242"]


def test_bad_store_urls_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for url in ("mysql://u@h/db", "postgresql://u:hunter2@h:99999/db", "sqlite://rel"):
        assert main(["--home", str(tmp_path / "h"), "--store", url, "ls"]) == 64
        err = capsys.readouterr().err
        assert "--store" in err
        assert "hunter2" not in err


def test_unreachable_store_is_exit_6_without_traceback_or_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://u:hunter2@127.0.0.1:{port}/db"
    for args in (
        ["ls"],
        ["status", "--json"],
        ["add", "http://127.0.0.1:9/x", "-o", str(tmp_path / "x")],
    ):
        assert main(["--home", str(tmp_path / "h"), "--store", url, *args]) == 6
        err = capsys.readouterr().err
        assert err.startswith("bgtransfer: cannot connect to the task store")
        assert "hunter2" not in err
        assert "Traceback" not in err


def test_the_environment_chooses_the_store_for_the_real_command(
    pg_url: str,  # noqa: F811
    pg: PostgresStore,
    server: FaultServer,
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "BGTRANSFER_STORE": pg_url,
        "BGTRANSFER_HOME": str(tmp_path / "home"),
    }
    add = ["add", server.url("/gen/5"), "-o", str(tmp_path / "e")]
    r = subprocess.run(
        [sys.executable, "-m", "bgtransfer", *add],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert pg.get(r.stdout.strip()) is not None
    env["BGTRANSFER_STORE"] = "oracle://nope"
    r = subprocess.run(
        [sys.executable, "-m", "bgtransfer", "ls"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert r.returncode == 64
    assert "$BGTRANSFER_STORE" in r.stderr
    assert not os.path.exists(socket_path(str(tmp_path / "home")))


def test_a_sqlite_store_url_names_the_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "h3"
    assert main(["--store", f"sqlite://{home}/bgtransfer.sqlite3", "daemon", "status"]) == 3
    assert f"not running (home {home})" in capsys.readouterr().out
    assert main(["--store", f"sqlite://{home}", "status", "--json"]) == 3  # the daemon's
    assert json.loads(capsys.readouterr().out)["home"] == str(home)
    assert main(["--home", str(tmp_path / "other"), "--store", f"sqlite://{home}", "ls"]) == 64
    assert "name two homes" in capsys.readouterr().err


def test_a_request_its_worker_has_not_applied_yet_says_so(
    run: Run, pg: PostgresStore, server: FaultServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from bgtransfer._storeclient import _control

    monkeypatch.setattr(_control, "CONTROL_WAIT", 0.3)
    _, out, _ = run("add", server.url("/gen/10"), "-o", str(tmp_path / "held"))
    task_id = out.strip()
    claim_one(pg, "busy-worker", lease_s=60.0)
    code, _, err = run("suspend", task_id[:8])
    assert code == 0
    assert f"asked the worker running {task_id[:12]} to suspend it" in err
    assert pg.controls_for("busy-worker") == [(task_id, "suspend")]  # it stays asked


def test_events_command_with_the_daemon(
    server: FaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.daemon.conftest import kill_daemon

    home = str(tmp_path / "dhome")
    try:
        assert main(["--home", home, "add", server.url("/gen/10"), "-o", str(tmp_path / "d")]) == 0
        task_id = capsys.readouterr().out.strip()
        assert main(["--home", home, "wait", task_id, "--timeout", "30"]) == 0
        capsys.readouterr()
        assert main(["--home", home, "events", "--no-follow"]) == 0
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    finally:
        kill_daemon(Path(home))
    assert [(x["task_id"], x["state"]) for x in lines[:-1]] == [(task_id, "completed")]
    assert lines[-1]["kind"] == "replay_end"
