"""Background fetch jobs in a real daemon: conditional runs, 304s, SIGKILL, catch-up, CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer._protocol._origin import origin_key
from bgtransfer.testing import FaultServer, gen_bytes

from .conftest import daemon_pid, kill_daemon, run_cli


def wait_runs(job: bgtransfer.Job, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The job's runs once ``n`` of them have finished (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = job.runs()
        done = [r for r in runs if r["finished_at"] is not None]
        if len(done) >= n:
            return runs
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(done)} of {n} runs finished: {runs}")
        time.sleep(0.1)


def wait_cooldown(home: Path, origin: str, timeout: float) -> bool:
    """Whether the store records a cool-down of ``origin`` within ``timeout`` s (read-only)."""
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        con = sqlite3.connect(f"file:{home / 'bgtransfer.sqlite3'}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT origin FROM cooldowns").fetchall()
        except sqlite3.OperationalError:  # locked by a writer for a moment
            rows = []
        finally:
            con.close()
        if (origin,) in rows:
            return True
        time.sleep(0.02)
    return False


def test_runs_are_conditional_gets_304_leaves_the_file_200_replaces_it(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    name = f"feed-{key}"
    url = server.add(name, b"version one\n")
    dest = tmp_path / "feed.txt"
    with bgtransfer.Session("app", home=home) as s:
        job = s.schedule(url, dest, every=2)
        assert job.every == 2.0
        runs = wait_runs(job, 1)
        assert runs[0]["outcome"] == "updated"
        assert runs[0]["status"] == 200
        assert dest.read_bytes() == b"version one\n"
        before = os.stat(dest)

        runs = wait_runs(job, 2)
        assert runs[1]["outcome"] == "not modified"
        assert runs[1]["status"] == 304
        after = os.stat(dest)
        assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
        assert dest.read_bytes() == b"version one\n"

        server.replace(name, b"version two, longer\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            runs = job.runs()  # the outcome is recorded just after the file is placed
            if "updated" in [r["outcome"] for r in runs[2:]]:
                break
            time.sleep(0.1)
        assert "updated" in [r["outcome"] for r in runs[2:]], runs
        assert dest.read_bytes() == b"version two, longer\n"
        # No partial file is left beside it by any run.
        assert sorted(os.listdir(tmp_path)) == ["feed.txt", "home"]

        # Each run is a task tied to its job, visible like any other.
        tasks = {t.id: t for t in s.tasks()}
        for r in runs:
            if r["outcome"] != "running":
                t = tasks[r["task_id"]]
                assert t.to_dict()["job"] == job.id
                assert t.state is bgtransfer.TaskState.COMPLETED
        assert tasks[runs[1]["task_id"]].detail == "not modified"
        assert [j.id for j in s.jobs()] == [job.id]
        assert job.next_run > time.time() - 1
        job.cancel()
        assert s.jobs() == []

    reqs = server.requests(f"/r/{name}")
    assert "if-none-match" not in reqs[0].headers
    # The second run asked with the ETag the first one got (the server's is the sha256).
    assert (
        reqs[1].headers["if-none-match"] == '"' + hashlib.sha256(b"version one\n").hexdigest() + '"'
    )


def test_a_job_without_etag_uses_if_modified_since(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    name = f"lm-{key}"
    url = server.add(name, b"dated\n", etag=None)
    dest = tmp_path / "dated.txt"
    with bgtransfer.Session("app", home=home) as s:
        job = s.schedule(url, dest, every=1.5)
        runs = wait_runs(job, 2)
        job.cancel()
    assert [r["outcome"] for r in runs[:2]] == ["updated", "not modified"]
    second = server.requests(f"/r/{name}")[1]
    assert "if-none-match" not in second.headers
    assert second.headers["if-modified-since"]


def test_jobs_survive_a_daemon_sigkill_and_catch_up_once_after_downtime(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    url = server.url(f"/gen/1K?changes_every=1000&key={key}")
    dest = tmp_path / "g.bin"
    with bgtransfer.Session("app", home=home) as s:
        job = s.schedule(url, dest, every=4)
        wait_runs(job, 1)
        job_id = job.id
    pid = kill_daemon(home)
    assert pid is not None
    # Down for more than two periods: two runs were missed.
    time.sleep(9.0)
    restarted = time.time()
    with bgtransfer.Session("app", home=home) as s:
        (job,) = s.jobs()
        assert job.id == job_id
        assert daemon_pid(home) not in (None, pid)
        runs = wait_runs(job, 3, timeout=30)
    catch_up, following = runs[1], runs[2]
    anchor = job.to_dict()["start_at"]
    # One catch-up run right after the restart, for the first missed time ...
    assert catch_up["started_at"] >= restarted
    assert catch_up["scheduled_for"] < restarted - 4.0
    assert catch_up["outcome"] == "not modified"
    # ... not one per missed period: the next run waits for the next grid point
    # (anchor + k * 4 s) and fires at most 0.4 s of jitter after it (plus the loop's lag).
    next_grid = anchor + 4.0 * (int((catch_up["started_at"] - anchor) / 4.0) + 1)
    assert following["started_at"] >= next_grid - 0.01, (runs, next_grid)
    assert following["started_at"] <= next_grid + 0.4 + 1.5, (runs, next_grid)


def test_job_input_is_checked_and_foreground_sessions_refuse_jobs(
    server: FaultServer, home: Path, tmp_path: Path
) -> None:
    url = server.url("/gen/1K")
    with bgtransfer.Session("app", home=home) as s:
        for bad in ({"every": 0.5}, {"every": "often"}, {"every": 60, "priority": "urgent"},
                    {"every": 60, "max_rate": -1}, {"every": 60, "bogus": 1}):  # fmt: skip
            with pytest.raises(bgtransfer.InvalidRequest):
                s.schedule(url, tmp_path / "x", **bad)
        with pytest.raises(bgtransfer.InvalidRequest):
            s.schedule("ftp://example.com/x", tmp_path / "x", every=60)
        assert s.jobs() == []
    with (
        bgtransfer.Session("fg", home=tmp_path / "fg", background=False) as s,
        pytest.raises(bgtransfer.InvalidRequest, match="background"),
    ):
        s.schedule(url, tmp_path / "y", every=60)


def test_cli_schedule_jobs_unschedule_and_limits(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "c.bin"
    url = server.url(f"/gen/2K?key={key}")
    r = run_cli(home, "schedule", url, "-o", str(dest), "--every", "1h")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    deadline = time.monotonic() + 30
    while not dest.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dest.stat().st_size == 2048
    r = run_cli(home, "jobs", "--json")
    (job,) = json.loads(r.stdout)
    assert job["id"] == job_id
    assert job["every"] == 3600.0
    assert job["next_run"] > time.time() + 3000
    assert job["runs"][0]["outcome"] in ("running", "updated")
    r = run_cli(home, "jobs")
    assert job_id[:12] in r.stdout
    r = run_cli(home, "ls", "--json")
    assert [t["job"] for t in json.loads(r.stdout)] == [job_id]
    r = run_cli(home, "unschedule", job_id[:8])
    assert r.returncode == 0, r.stderr
    assert json.loads(run_cli(home, "jobs", "--json").stdout) == []
    assert run_cli(home, "unschedule", job_id).returncode == 4

    assert run_cli(home, "schedule", url, "-o", str(dest), "--every", "soon").returncode == 64
    assert run_cli(home, "get", url, "--limit-rate", "4X", "-o", str(dest)).returncode == 64
    assert run_cli(home, "add", url, "--priority", "urgent").returncode == 64

    r = run_cli(home, "limit", "--global", "10M", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["global"] == 10 << 20
    r = run_cli(home, "limit", "--origin", server.base_url + "/x", "2M")
    assert r.returncode == 0, r.stderr
    host_port = server.base_url.removeprefix("http://")
    assert f"http://{host_port}: 2M/s" in r.stdout
    assert "global: 10M/s" in r.stdout
    assert run_cli(home, "limit", "--origin", "ftp://x", "2M").returncode == 5
    # Kept across a daemon restart.
    kill_daemon(home)
    r = run_cli(home, "limit", "--json")
    assert json.loads(r.stdout)["global"] == 10 << 20
    r = run_cli(home, "limit", "--global", "off", "--json")
    assert json.loads(r.stdout)["global"] is None


def test_cli_start_at_limit_rate_and_priority_reach_the_task(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "later.bin"
    r = run_cli(
        home, "add", server.url(f"/gen/1K?key={key}"), "-o", str(dest), "--start-at", "+1h",
        "--limit-rate", "512K", "--priority", "high", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    task = json.loads(r.stdout)
    assert task["detail"].startswith("scheduled for ")
    assert task["max_rate"] == 512 << 10
    assert task["priority"] == "high"
    assert task["start_at"] > time.time() + 3000
    time.sleep(0.5)
    assert [x for x in server.requests() if x.query.get("key") == key] == []
    assert run_cli(home, "cancel", task["id"]).returncode == 0

    src = tmp_path / "up.bin"
    src.write_bytes(b"x" * 1000)
    r = run_cli(
        home, "put", str(src), server.url(f"/upload/{key}"), "--limit-rate", "1M",
        "--priority", "low", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    up = json.loads(r.stdout)
    assert (up["max_rate"], up["priority"], up["error"]) == (1 << 20, "low", None)


def test_a_failing_run_retries_within_its_period_and_says_why(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    url = server.url(f"/gen/1K?status=500&key={key}")
    with bgtransfer.Session("app", home=home) as s:
        job = s.schedule(url, tmp_path / "never.bin", every=2, retry_wait=0.1, max_retry_wait=0.2)
        runs = wait_runs(job, 1)
        job.cancel()
    first = runs[0]
    assert first["outcome"].startswith("failed: resource timeout of 2 s"), first
    assert first["status"] == 500
    assert first["finished_at"] - first["started_at"] <= 2.0 + 1.0
    assert len([r for r in server.requests() if r.query.get("key") == key]) >= 3  # it retried
    assert not (tmp_path / "never.bin").exists()


def test_async_sessions_schedule_too(server: FaultServer, home: Path, tmp_path: Path) -> None:
    async def go() -> tuple[str, list[dict[str, Any]], int]:
        async with bgtransfer.AsyncSession("async-app", home=home) as s:
            job = await s.schedule(server.url("/gen/1K"), tmp_path / "a.bin", every="1h")
            deadline = time.monotonic() + 30
            runs = await job.runs()
            while not (runs and runs[0]["finished_at"]) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                runs = await job.runs()
            listed = [j.id for j in await s.jobs()]
            # The run's completion is in the session's event log like any task's.
            async with asyncio.timeout(20):
                async for ev in s.events():
                    if ev.task_id == runs[0]["task_id"] and ev.state.value == "completed":
                        break
            await job.cancel()
            return job.id, runs, len(await s.jobs()) + (0 if listed == [job.id] else 100)

    job_id, runs, left = asyncio.run(go())
    assert runs[0]["outcome"] == "updated"
    assert left == 0
    assert (tmp_path / "a.bin").read_bytes() == gen_bytes(1024)
    assert len(job_id) == 32


def test_an_origin_cool_down_survives_a_daemon_sigkill(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    with bgtransfer.Session("app", home=home) as s:
        first = s.download(
            server.url(f"/gen/1K?status=429&retry_after=6&times=1&key={key}a"),
            tmp_path / "a.bin",
        )
        deadline = time.monotonic() + 20
        while not [r for r in server.requests() if r.query.get("key") == key + "a"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        (told,) = [r for r in server.requests() if r.query.get("key") == key + "a"]
        # The cool-down is committed right after the answer: the kill must come after it.
        assert wait_cooldown(home, origin_key(server.base_url), 20)
    assert kill_daemon(home) is not None
    with bgtransfer.Session("app", home=home) as s:
        second = s.download(server.url(f"/gen/1K?key={key}b"), tmp_path / "b.bin")
        r = run_cli(home, "limit", "--json")
        assert origin_key(server.base_url) in json.loads(r.stdout)["cooling"]
        second.wait(timeout=30)
        s.task(first.id).wait(timeout=30)
    assert second.error is None
    (asked,) = [r for r in server.requests() if r.query.get("key") == key + "b"]
    assert asked.time - told.time >= 6.0 - 0.05
