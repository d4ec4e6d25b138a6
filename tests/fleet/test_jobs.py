"""Background fetch jobs in fleet mode, on a real PostgreSQL: real worker processes fire
the due occurrences, each once across the fleet; the CLI and the Python API schedule, list
and remove jobs straight through the store."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import bgtransfer
from bgtransfer._jobspec import new_job, run_row
from bgtransfer._store._base import JobRow, TaskRow
from bgtransfer._store._postgres import PostgresStore
from bgtransfer.cli import main
from bgtransfer.testing import FaultServer
from tests.fleet.fleet import Fleet, eventually


def _finished(job: bgtransfer.Job) -> list[dict[str, Any]]:
    return [r for r in job.runs() if r["finished_at"] is not None]


def _run_tasks(url: str, job_id: str) -> int:
    with psycopg.connect(url, autocommit=True) as con:
        (n,) = con.execute(
            "SELECT COUNT(*) FROM tasks WHERE spec::json->>'job_id' = %s", (job_id,)
        ).fetchone() or (0,)
    return int(n)


def _starter(fleet: Fleet, task_id: str) -> str:
    """The worker whose log says it started the run ``task_id``."""

    def found() -> list[str]:
        return [n for n in fleet.procs if re.search(rf"run {task_id} started", fleet.log(n))]

    eventually(lambda: bool(found()), 10, "the log line of the run")  # logged after commit
    assert len(found()) == 1, found()  # started by exactly one worker
    return found()[0]


def test_two_workers_fire_each_occurrence_once_and_a_sigkilled_one_changes_nothing(
    fleet: Fleet, pg_url: str, server: FaultServer, tmp_path: Path, key: str
) -> None:
    name = f"fleetjob-{key}"
    url = server.add(name, b"version one\n")
    dest = tmp_path / "feed.txt"
    fleet.start("w1")
    fleet.start("w2")
    with bgtransfer.Session("app", home=tmp_path / "home", store=pg_url) as s:
        job = s.schedule(url, dest, every=1)
        eventually(lambda: len(_finished(job)) >= 3, 30, "three runs", interval=0.2)
        # Kill the worker that fired the latest run: the other goes on firing.
        latest = job.runs()[-1]["task_id"]
        fleet.kill(_starter(fleet, latest))
        before = len(job.runs())
        eventually(lambda: len(_finished(job)) >= before + 3, 30, "runs go on", interval=0.2)
        assert fleet.stop(_other(fleet)) == 0  # nobody fires any more: the history holds
        runs = job.runs()
        anchor = job.to_dict()["start_at"]
        job.cancel()
        assert s.jobs() == []
    assert dest.read_bytes() == b"version one\n"
    # Each occurrence fired once: one run per grid slot, numbered without gaps, one task each.
    assert len(runs) >= 6
    assert [r["n"] for r in runs] == list(range(1, len(runs) + 1))
    slots = [int((r["scheduled_for"] - anchor) // 1.0) for r in runs]
    assert slots == sorted(set(slots)), slots
    assert _run_tasks(pg_url, job.id) == len(runs)
    outcomes = [r["outcome"] for r in runs if r["finished_at"] is not None]
    assert outcomes[0] == "updated"
    assert set(outcomes[1:]) <= {"not modified"}, outcomes
    assert [r["status"] for r in runs if r["finished_at"] is not None][1:] == [304] * (
        len(outcomes) - 1
    )
    # One request per run: a finished run made one (a run cut by the SIGKILL: one more, by
    # its new worker); the last run may not have been claimed when the worker stopped.
    reqs = server.requests(f"/r/{name}")
    assert len(outcomes) <= len(reqs) <= len(runs) + 1, (len(reqs), len(runs))
    etag = '"' + hashlib.sha256(b"version one\n").hexdigest() + '"'
    assert [r.headers.get("if-none-match") for r in reqs[1:]] == [etag] * (len(reqs) - 1)


def _other(fleet: Fleet) -> str:
    (alive,) = [n for n, p in fleet.procs.items() if p.poll() is None]
    return alive


def test_a_job_being_fired_is_skipped_by_another_worker_and_catches_up_once(
    pg: PostgresStore, pg_url: str, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Two workers' transactions at once (two connections): the one that locked the job
    fires it; the other skips it, then finds it not due any more. After ten missed periods
    the job fires once and keeps its grid."""
    now = time.time()
    job = new_job(
        {"session": "app", "url": server.url(f"/gen/1K?key={key}"), "path": str(tmp_path / "f"),
         "every": 10},
        now=now - 100.5,
    )  # fmt: skip
    pg.schedule_job(job)
    other = PostgresStore(pg_url)
    building, go = threading.Event(), threading.Event()
    results: list[Any] = []

    def slow_build(j: JobRow) -> TaskRow:
        building.set()
        assert go.wait(10)
        return run_row(j)

    first = threading.Thread(
        target=lambda: results.append(pg.fire_due(slow_build, now=now, rng=lambda: 0.0))
    )
    first.start()
    try:
        assert building.wait(10)
        assert other.fire_due(run_row, now=now, rng=lambda: 0.0) == []  # locked: skipped
    finally:
        go.set()
        first.join(10)
    ((fired,),) = results
    assert fired.job_id == job.id
    assert fired.task_id is not None
    assert other.fire_due(run_row, now=now + 0.1, rng=lambda: 0.0) == []  # not due any more
    (stored,) = other.list_jobs()
    # Once to catch up, then the grid: anchor + 11 * every is the first slot after now.
    assert stored.next_run == pytest.approx(job.anchor + 110)
    assert [r["scheduled_for"] for r in other.job_runs(job.id)] == [job.next_run]
    assert other.next_job_due() == pytest.approx(job.anchor + 110)
    other.close()


def test_cli_and_session_schedule_list_and_remove_jobs_through_the_store(
    pg_url: str, pg: PostgresStore, server: FaultServer, tmp_path: Path, key: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    home = tmp_path / "home"

    def cli(*args: str) -> tuple[int, str]:
        code = main(["--home", str(home), "--store", pg_url, *args])
        return code, capsys.readouterr().out

    url = server.url(f"/gen/2K?key={key}")
    code, out = cli("schedule", url, "-o", str(tmp_path / "c.bin"), "--every", "1h")
    assert code == 0
    job_id = out.strip()
    code, out = cli("jobs", "--json")
    (listed,) = json.loads(out)
    assert (listed["id"], listed["every"], listed["runs"]) == (job_id, 3600.0, [])
    assert pg.get_job(job_id) is not None  # in the store: the workers fire it
    with bgtransfer.Session("app", home=home, store=pg_url) as s:
        assert s.jobs() == []  # the CLI's job is in session "default"
        job = s.schedule(url, tmp_path / "d.bin", every="15m", start_at=time.time() + 600)
        assert [j.id for j in s.jobs()] == [job.id]
        assert job.next_run == pytest.approx(job.to_dict()["start_at"])
        assert job.runs() == []
        with pytest.raises(bgtransfer.InvalidRequest):
            s.schedule(url, tmp_path / "e.bin", every=0.5)
        with pytest.raises(bgtransfer.InvalidRequest, match="directory does not exist"):
            s.schedule(url, tmp_path / "nowhere" / "e.bin", every=60)
        job.cancel()
        assert s.jobs() == []
    assert cli("unschedule", job_id[:8])[0] == 0
    assert json.loads(cli("jobs", "--json")[1]) == []
    assert cli("unschedule", job_id)[0] == 4
