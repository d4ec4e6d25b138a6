"""What a new user trips over (issue 12): lines while waiting, waits that end, exit codes,
secrets, forgetting finished tasks. The real command against a real daemon and test server."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import click
import pytest

import bgtransfer
from bgtransfer.cli._app import cli
from bgtransfer.testing import FaultServer, gen_bytes
from tests.cli.test_cli import bgt
from tests.daemon.conftest import kill_daemon, kill_every_daemon


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    yield h
    kill_daemon(h)
    kill_every_daemon(h)


def no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    assert "Traceback" not in r.stdout, r.stdout


@contextlib.contextmanager
def mounted(where: Path, options: str) -> Iterator[None]:
    """A tmpfs at ``where`` (root only), unmounted afterwards."""
    where.mkdir(exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root"
)


def closed_port() -> int:
    """A local port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def slammer() -> Iterator[int]:
    """A server that accepts each connection and closes it at once, saying nothing."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        srv.close()


def only_id(home: Path) -> str:
    tasks = json.loads(bgt(home, "ls", "--json").stdout)
    assert len(tasks) == 1, tasks
    return str(tasks[0]["id"])


# -- item 5: a line for every retry and resume, terminal or not ----------------------------


def test_get_without_a_terminal_tells_every_retry_and_resume(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    url = server.url(f"/gen/2M?cut=300000&times=2&rate=2000000&key={key}")
    r = bgt(home, "get", url, "-o", str(tmp_path / "a.bin"))
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    retries = [line for line in lines if line.startswith("retrying in")]
    assert len(retries) == 2, r.stderr
    assert "connection lost at byte 300000" in retries[0]
    assert retries[0].endswith("(attempt 1)")
    assert retries[1].endswith("(attempt 2)")
    assert any("resumed at byte 300000" in line for line in lines), r.stderr
    assert lines[-1].startswith("saved ")
    assert "\x1b[" not in r.stderr
    assert (tmp_path / "a.bin").read_bytes() == gen_bytes(2 << 20)


def test_watch_without_a_terminal_prints_plain_lines(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    # A progress line comes every 5 s: 11 s of transfer after the cut leaves room for a
    # slow start of `watch` on a loaded machine (6 MiB did not).
    url = server.url(f"/gen/12M?cut=1000000&times=1&rate=1000000&key={key}")
    r = bgt(home, "add", url, "-o", str(tmp_path / "w.bin"))
    assert r.returncode == 0, r.stderr
    task_id = r.stdout.strip()
    r = bgt(home, "watch", task_id[:8])
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert any(line.startswith("retrying in") for line in lines), r.stderr
    assert any("resumed at byte" in line for line in lines), r.stderr
    assert any(line.startswith("w.bin: ") and "%" in line for line in lines), r.stderr
    assert lines[-1].startswith("saved ")


# -- item 6: a transfer that cannot start says so, and can fail fast -------------------------


def test_connection_refused_is_told_on_every_attempt_and_retry_for_gives_up(
    home: Path, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/x"
    t0 = time.monotonic()
    r = bgt(home, "get", url, "-o", str(tmp_path / "x"), "--retry-for", "3s")
    took = time.monotonic() - t0
    assert r.returncode == 1, r.stderr
    no_traceback(r)
    lines = r.stderr.splitlines()
    assert lines[0].startswith("retrying in "), r.stderr
    assert lines[0].endswith("connection refused (attempt 1)"), r.stderr
    numbers = [int(line.rsplit("attempt ", 1)[1].rstrip(")")) for line in lines[:-1]]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) >= 2
    assert lines[-1].startswith("bgtransfer: failed: cannot connect to 127.0.0.1:")
    assert "retry_for is 3 s" in lines[-1]
    assert took < 30  # not the default 7-day background retry
    shown = json.loads(bgt(home, "show", only_id(home), "--json").stdout)
    assert shown["error_code"] == "connect_error"


def test_a_server_that_closes_at_once_and_max_attempts(home: Path, tmp_path: Path) -> None:
    with slammer() as port:
        r = bgt(home, "get", f"http://127.0.0.1:{port}/x", "-o", str(tmp_path / "y"),
                "--max-attempts", "3")  # fmt: skip
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert [line.rsplit(" (attempt", 1)[1] for line in lines[:-1]] == [" 1)", " 2)"], r.stderr
    # A close, or a reset when the request was still unread: both are said plainly.
    assert all("connection lost before the response" in line for line in lines[:-1]), r.stderr
    assert "gave up after 3 attempts" in lines[-1]


def test_a_name_that_does_not_resolve_is_told(home: Path, tmp_path: Path) -> None:
    r = bgt(home, "get", "http://no-such-host.invalid/x", "-o", str(tmp_path / "z"),
            "--max-attempts", "2")  # fmt: skip
    assert r.returncode == 1, r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("retrying in ")
    assert "cannot resolve no-such-host.invalid" in first
    assert first.endswith("(attempt 1)")


def test_retry_for_in_the_api_and_bad_durations(home: Path, tmp_path: Path) -> None:
    with bgtransfer.Session("rf", home=home) as s:
        t = s.download(f"http://127.0.0.1:{closed_port()}/x", tmp_path / "x", retry_for=1.0)
        t.wait(timeout=30)
        assert isinstance(t.error, bgtransfer.ConnectError)
        assert "retry_for is 1 s" in str(t.error)
        with pytest.raises(bgtransfer.InvalidRequest, match="retry_for"):
            s.download("http://127.0.0.1:1/x", tmp_path / "y", retry_for=-1.0)
    r = bgt(home, "get", "http://127.0.0.1:1/x", "--retry-for", "soon")
    assert r.returncode == 64
    assert "not a duration" in r.stderr


# -- item 4: a suspension by the daemon ends get and wait ------------------------------------


@needs_root
def test_disk_full_ends_get_and_wait_with_their_own_code(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    full = tmp_path / "full"
    with mounted(full, "size=1m"):
        url = server.url(f"/gen/4M?key={key}")
        r = bgt(home, "get", url, "-o", str(full / "big.bin"), timeout=60)
        assert r.returncode == 9, r.stderr
        no_traceback(r)
        assert "suspended by the daemon" in r.stderr
        assert "No space left on device" in r.stderr
        assert "bgtransfer resume" in r.stderr
        task_id = only_id(home)
        r = bgt(home, "wait", task_id, timeout=60)
        assert r.returncode == 9, r.stderr
        assert "No space left on device" in r.stderr
        r = bgt(home, "get", url, "-o", str(full / "json.bin"), "--json", timeout=60)
        assert r.returncode == 9
        assert json.loads(r.stdout)["state"] == "suspended"
        for t in json.loads(bgt(home, "ls", "--json").stdout):
            assert bgt(home, "cancel", t["id"]).returncode == 0


def test_wait_on_a_task_the_user_suspended_keeps_waiting(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    url = server.url(f"/gen/4M?rate=500000&key={key}")
    task_id = bgt(home, "add", url, "-o", str(tmp_path / "s.bin")).stdout.strip()
    assert bgt(home, "suspend", task_id).returncode == 0
    r = bgt(home, "wait", task_id, "--timeout", "2")
    assert r.returncode == 2, r.stderr
    assert "is suspended; waiting until it is resumed" in r.stderr
    assert bgt(home, "cancel", task_id).returncode == 0


# -- item 8: passwords in URLs ---------------------------------------------------------------


def test_a_password_in_the_url_is_never_shown(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    secret = "s3cr3tPW"
    url = server.url(f"/gen/10?status=404&key={key}").replace("://", f"://bob:{secret}@")
    r = bgt(home, "get", url, "-o", str(tmp_path / "p"))
    assert r.returncode == 1
    assert "bob:***@" in r.stderr
    outputs = [r.stdout + r.stderr]
    task_id = only_id(home)
    for args in (["ls"], ["ls", "--json"], ["show", task_id], ["show", task_id, "--json"],
                 ["wait", task_id, "--json"]):  # fmt: skip
        r = bgt(home, *args)
        outputs.append(r.stdout + r.stderr)
    assert "bob:***@" in outputs[3]
    retry = server.url(f"/gen/10?status=503&times=1&key={key}").replace("://", f"://bob:{secret}@")
    assert bgt(home, "get", retry, "-o", str(tmp_path / "q")).returncode == 0
    r = bgt(home, "get", f"http://bob:{secret}@[::1/x")
    assert r.returncode == 5
    no_traceback(r)
    outputs.append(r.stdout + r.stderr)

    async def events() -> list[str]:
        out = []
        async with bgtransfer.AsyncSession("cli", home=home) as s:
            async with asyncio.timeout(10):
                async for ev in s.events(since=0):
                    out.append(repr(ev))
                    if len(out) >= 4:
                        break
        return out

    outputs += asyncio.run(events())
    for t in json.loads(bgt(home, "ls", "--json").stdout):
        outputs.append(json.dumps(bgt(home, "show", t["id"], "--json").stdout))
    bgt(home, "daemon", "stop")
    outputs.append((home / "daemon.log").read_text())
    for text in outputs:
        assert secret not in text, text


# -- item 9: exit codes and no tracebacks ----------------------------------------------------


def test_exit_codes_match_the_table(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    (tmp_path / "dir").mkdir()
    r = bgt(home, "get", server.url("/gen/10"), "-o", str(tmp_path / "dir"))
    assert r.returncode == 5, r.stderr
    assert "is a directory" in r.stderr
    slow = server.url(f"/gen/8M?rate=500000&key={key}")
    first = bgt(home, "add", slow, "-o", str(tmp_path / "same.bin"))
    assert first.returncode == 0
    r = bgt(home, "add", slow + "x", "-o", str(tmp_path / "same.bin"))
    assert r.returncode == 5, r.stderr
    no_traceback(r)
    assert bgt(home, "cancel", first.stdout.strip()).returncode == 0
    done = bgt(home, "add", server.url(f"/gen/10?key={key}"), "-o", str(tmp_path / "d.bin"))
    task_id = done.stdout.strip()
    assert bgt(home, "wait", task_id).returncode == 0
    for verb in ("suspend", "resume", "cancel"):
        r = bgt(home, verb, task_id)
        assert r.returncode == 8, (verb, r.stderr)
        assert "completed" in r.stderr
        no_traceback(r)
    # A refused control call leaves nothing behind: wait and rm still answer at once.
    r = bgt(home, "wait", task_id, "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert bgt(home, "rm", task_id).returncode == 0
    r = bgt(home, "get", "http://[::1/x")
    assert r.returncode == 5
    assert "cannot be parsed" in r.stderr
    no_traceback(r)


def test_an_unusable_home_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    for args in (["ls"], ["get", "http://127.0.0.1:1/x"], ["daemon", "start"]):
        r = bgt(afile, *args)
        assert r.returncode == 6, (args, r.stderr)
        assert "cannot use" in r.stderr
        no_traceback(r)
    r = bgt(afile / "sub", "ls")
    assert r.returncode == 6
    no_traceback(r)
    env = {"BGTRANSFER_HOME": str(afile)}
    r = subprocess.run(
        [sys.executable, "-m", "bgtransfer", "ls"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env},
    )
    assert r.returncode == 6, r.stderr
    assert str(afile) in r.stderr
    no_traceback(r)


@needs_root
def test_a_read_only_home_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    with mounted(ro, "ro,size=1m,mode=0700"):
        for args in (["ls"], ["add", "http://127.0.0.1:1/x", "-o", str(tmp_path / "x")]):
            r = bgt(ro, *args)
            assert r.returncode == 6, (args, r.stderr)
            assert "not writable" in r.stderr
            no_traceback(r)


# -- item 10: the small things ---------------------------------------------------------------


def test_version_and_help_texts(home: Path) -> None:
    r = bgt(home, "--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"bgtransfer {importlib.metadata.version('bgtransfer')}"
    r = bgt(home, "serve-test", "--help")
    assert r.returncode == 0
    assert "Usage: bgtransfer serve-test [OPTIONS]" in r.stdout
    for option in ("--host", "--port", "--other-host"):
        assert option in r.stdout

    def commands(group: click.Group, prefix: str) -> Iterator[tuple[str, click.Command]]:
        for name, cmd in group.commands.items():
            yield f"{prefix} {name}", cmd
            if isinstance(cmd, click.Group):
                yield from commands(cmd, f"{prefix} {name}")

    missing = [
        f"{path} {p.opts[0]}"
        for path, cmd in commands(cli, "bgtransfer")
        for p in cmd.params
        if isinstance(p, click.Option) and not p.help
    ]
    assert missing == []


def test_show_dates_and_fields_of_a_completed_task(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    url = server.url(f"/gen/3M?no_accept_ranges=1&key={key}")
    r = bgt(home, "get", url, "-o", str(tmp_path / "s.bin"), "--segments", "4", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    created = dt.datetime.fromisoformat(doc["created_at"])
    finished = dt.datetime.fromisoformat(doc["finished_at"])
    assert created.tzinfo is not None
    assert created <= finished
    assert abs(created.timestamp() - time.time()) < 120
    text = bgt(home, "show", doc["id"]).stdout
    local = created.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    assert f"created_at: {local}" in text
    assert "partial file" not in text
    assert "segments: 1 (asked for 4: the server did not allow ranges)" in text
    shown = json.loads(bgt(home, "show", doc["id"], "--json").stdout)
    assert shown["created_at"] == doc["created_at"]


# -- item 11: forgetting finished tasks ------------------------------------------------------


def store_counts(home: Path) -> tuple[int, int, int]:
    with contextlib.closing(sqlite3.connect(home / "bgtransfer.sqlite3")) as db:
        return tuple(
            db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("tasks", "attempts", "events")
        )


def test_rm_and_prune(server: FaultServer, home: Path, tmp_path: Path, key: str) -> None:
    ids = []
    for n in range(3):
        r = bgt(home, "get", server.url(f"/gen/100?key={key}{n}"), "-o", str(tmp_path / f"{n}"))
        assert r.returncode == 0, r.stderr
    ids = [t["id"] for t in json.loads(bgt(home, "ls", "--json").stdout)]
    running = bgt(home, "add", server.url(f"/gen/8M?rate=300000&key={key}"), "-o",
                  str(tmp_path / "run.bin")).stdout.strip()  # fmt: skip
    r = bgt(home, "rm", ids[0][:10], running)
    assert r.returncode == 8, r.stderr
    assert "cancel it first" in r.stderr
    assert len(json.loads(bgt(home, "ls", "--json").stdout)) == 4  # none removed
    r = bgt(home, "rm", ids[0][:10])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [ids[0]]
    assert (tmp_path / "0").read_bytes() == gen_bytes(100)  # the file stays
    assert bgt(home, "show", ids[0]).returncode == 4
    assert bgt(home, "rm", "ffffffffff").returncode == 4
    r = bgt(home, "prune", "--completed", "--older-than", "1h", "--json")
    assert (r.returncode, json.loads(r.stdout)) == (0, [])
    r = bgt(home, "prune", "--completed", "--json")
    assert r.returncode == 0
    assert sorted(json.loads(r.stdout)) == sorted(ids[1:])
    assert [t["id"] for t in json.loads(bgt(home, "ls", "--json").stdout)] == [running]
    assert bgt(home, "prune").returncode == 64  # --completed is required
    assert bgt(home, "cancel", running).returncode == 0
    assert bgt(home, "wait", running).returncode == 1
    assert bgt(home, "prune", "--completed").returncode == 0
    bgt(home, "daemon", "stop")
    assert store_counts(home) == (0, 0, 0)  # rows, history and events all gone


@pytest.mark.parametrize("background", [True, False])
def test_remove_in_the_api(
    server: FaultServer, home: Path, tmp_path: Path, key: str, background: bool
) -> None:
    with bgtransfer.Session("rm", home=home, background=background) as s:
        a = s.download(server.url(f"/gen/100?key={key}a"), tmp_path / "a")
        b = s.download(server.url(f"/gen/100?key={key}b"), tmp_path / "b")
        slow = s.download(server.url(f"/gen/8M?rate=300000&key={key}"), tmp_path / "slow")
        s.wait_all([a, b])
        with pytest.raises(bgtransfer.InvalidTransition, match="cancel it first"):
            slow.remove()
        with pytest.raises(bgtransfer.InvalidTransition):
            s.remove(a, slow)  # all checked first: a stays
        with pytest.raises(bgtransfer.TaskNotFound):
            s.remove("0" * 32)
        assert {t.id for t in s.tasks()} == {a.id, b.id, slow.id}
        a.remove()
        s.remove(b.id)
        assert [t.id for t in s.tasks()] == [slow.id]
        assert (tmp_path / "a").read_bytes() == gen_bytes(100)
        slow.cancel()
        slow.wait(timeout=30)
        slow.remove()
        assert s.tasks() == []

    async def go() -> None:
        async with bgtransfer.AsyncSession("rm", home=home, background=background) as s:
            t = await s.download(server.url(f"/gen/10?key={key}c"), tmp_path / "c")
            await t.wait(timeout=30)
            await s.remove(t)
            assert await s.tasks() == []
            u = await s.download(server.url(f"/gen/10?key={key}d"), tmp_path / "d")
            await u.wait(timeout=30)
            await u.remove()
            assert await s.tasks() == []

    asyncio.run(go())


# -- item 12: response headers, short bodies -------------------------------------------------


def test_response_headers_are_a_case_insensitive_mapping(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    with bgtransfer.Session("h", home=home) as s:
        t = s.download(server.url(f"/gen/100?key={key}"), tmp_path / "h").wait(timeout=30)
        h = t.response_headers
        assert isinstance(h, Mapping)
        assert h["Content-Length"] == h["content-length"] == h["CONTENT-LENGTH"] == "100"
        assert "ETag" in h
        assert h.get("X-Missing") is None
        with pytest.raises(TypeError):
            h["x"] = "y"  # type: ignore[index]


def test_a_content_length_larger_than_the_body_is_a_short_body(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    url = server.url(f"/gen/100000?long_length=500&key={key}")
    r = bgt(home, "get", url, "-o", str(tmp_path / "short.bin"), "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["error_code"] == "integrity_error"
    assert doc["error"].startswith("short body: the server sent 100000 bytes")
    assert "keeps changing" not in r.stderr
    assert doc["restarts"] == 0
    assert not (tmp_path / "short.bin").exists()


def test_a_password_in_the_url_stays_out_of_api_errors_and_history(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    secret = "s3cr3tPW"
    url = server.url(f"/gen/10?status=404&key={key}").replace("://", f"://bob:{secret}@")
    with bgtransfer.Session("fg", home=home, background=False) as s:
        t = s.download(url, tmp_path / "f").wait(timeout=30)
        assert isinstance(t.error, bgtransfer.HTTPStatusError)
        assert secret not in str(t.error)
        assert "bob:***@" in str(t.error)
        assert secret not in repr(t.history())
        assert secret not in json.dumps(t.to_dict())
        with pytest.raises(bgtransfer.InvalidRequest) as info:
            s.download(f"ftp://bob:{secret}@host/x", tmp_path / "g")
        assert secret not in str(info.value)
