"""The real `bgtransfer` command as a subprocess, against the test server and a real daemon."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import bgtransfer
from bgtransfer.cli._submit import name_from_url
from bgtransfer.testing import FaultServer, gen_bytes
from tests.daemon.conftest import kill_daemon, kill_every_daemon

CONTRACT_FIELDS = {
    "id", "session", "url", "path", "state", "bytes_received", "bytes_expected",
    "status_code", "error",
}  # fmt: skip


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    yield h
    kill_daemon(h)
    kill_every_daemon(h)


def bgt(home: Path, *args: str, cwd: Path | None = None, timeout: float = 60,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bgtransfer", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=full_env,
    )


def test_get_downloads_resumes_and_reports(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    url = server.url(f"/gen/2M?cut=700000&times=1&key={key}")
    r = bgt(home, "get", url, "-o", str(tmp_path / "a.bin"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert "saved" in r.stderr
    assert "\x1b[" not in r.stderr
    assert (tmp_path / "a.bin").read_bytes() == gen_bytes(2 << 20)


def test_get_json_is_one_document_and_names_from_url(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    r = bgt(home, "get", server.url(f"/gen/1000?key={key}"), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) >= CONTRACT_FIELDS
    assert doc["state"] == "completed"
    assert doc["error"] is None
    assert doc["path"] == str(tmp_path / "1000")
    assert (tmp_path / "1000").read_bytes() == gen_bytes(1000)


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://h/dir/file.iso", "file.iso"),
        ("http://h/dir/", "index.html"),
        ("http://h/%2E%2E%2Fetc%2Fpasswd", "passwd"),
        ("http://h/..%5C..%5Cevil.exe", "evil.exe"),
        ("http://h/.hidden", "hidden"),
        ("http://h/a%0Ab%1B.txt", "ab.txt"),
    ],
)
def test_name_from_url_is_safe(url: str, name: str) -> None:
    assert name_from_url(url) == name


def test_get_failure_and_bad_input_exit_codes(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    r = bgt(home, "get", server.url(f"/gen/10?status=404&key={key}"), "-o", str(tmp_path / "x"))
    assert r.returncode == 1
    assert r.stderr.strip().startswith("bgtransfer: failed: server answered 404")
    assert len(r.stderr.strip().splitlines()) == 1
    r = bgt(home, "get", "ftp://example/x")
    assert (r.returncode, "Traceback" in r.stderr) == (5, False)
    assert "scheme must be http or https" in r.stderr
    (tmp_path / "taken").write_bytes(b"x")
    r = bgt(home, "get", server.url("/gen/10"), "-o", str(tmp_path / "taken"))
    assert r.returncode == 5
    assert "already exists" in r.stderr
    r = bgt(home, "get", server.url("/gen/10"), "-H", "no-colon")
    assert r.returncode == 5
    assert "Name: value" in r.stderr
    assert bgt(home, "frobnicate").returncode == 64
    assert bgt(home, "ls", "--bogus").returncode == 64
    r = bgt(home, "show", "ffffffffffff")
    assert r.returncode == 4
    assert "no task" in r.stderr


def test_add_ls_show_control_wait(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    # The first answer stalls after 1 MB (not a throttle a loaded machine could outrun):
    # the task is surely running when it is suspended; the resumed Range request is fast.
    url = server.url(f"/gen/4M?stall_body=1000000&stall=30&times=1&key={key}")
    r = bgt(home, "add", url, "-o", str(tmp_path / "q.bin"))
    assert r.returncode == 0, r.stderr
    task_id = r.stdout.strip()
    assert len(task_id) == 32
    listed = json.loads(bgt(home, "ls", "--json").stdout)
    assert [t["id"] for t in listed] == [task_id]
    assert set(listed[0]) >= CONTRACT_FIELDS
    assert listed[0]["state"] == "running"
    plain = bgt(home, "ls").stdout
    assert task_id[:8] in plain
    assert "q.bin" in plain
    prefix = task_id[:6]
    assert bgt(home, "suspend", prefix).returncode == 0
    shown = json.loads(bgt(home, "show", prefix, "--json").stdout)
    assert shown["id"] == task_id
    assert shown["state"] == "suspended"
    shown_text = bgt(home, "show", prefix).stdout
    assert "request_timeout" in shown_text
    assert "history:" in shown_text
    assert "#1" in shown_text
    assert "suspended" in shown_text.split("history:")[1]
    r = bgt(home, "wait", prefix, "--timeout", "0.5")
    assert r.returncode == 2
    assert bgt(home, "resume", prefix).returncode == 0
    r = bgt(home, "wait", prefix, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "completed"
    assert (tmp_path / "q.bin").read_bytes() == gen_bytes(4 << 20)
    r2 = bgt(
        home,
        "add",
        server.url(f"/gen/4M?rate=100000&key={key}2"),
        "-o",
        str(tmp_path / "c"),
        "--json",
    )
    other = json.loads(r2.stdout)["id"]
    assert bgt(home, "cancel", other[:10]).returncode == 0
    r = bgt(home, "wait", other)
    assert r.returncode == 1
    assert "cancelled" in r.stderr


def test_ambiguous_prefix(server: FaultServer, home: Path, tmp_path: Path, key: str) -> None:
    with bgtransfer.Session("many", home=home) as s:
        ids = [
            s.download(server.url(f"/gen/10?key={key}{i}"), tmp_path / f"m{i}").id
            for i in range(17)
        ]
    first = [i[0] for i in ids]
    shared = next(c for c in first if first.count(c) > 1)  # 17 ids, 16 hex digits
    r = bgt(home, "show", shared)
    assert r.returncode == 4
    assert "ambiguous" in r.stderr


def test_watch_and_help(server: FaultServer, home: Path, tmp_path: Path, key: str) -> None:
    task_id = bgt(
        home, "add", server.url(f"/gen/1M?rate=2000000&key={key}"), "-o", str(tmp_path / "w")
    ).stdout.strip()
    r = bgt(home, "watch", task_id[:8])
    assert r.returncode == 0
    assert "saved" in r.stderr
    r = bgt(home, "watch")
    assert r.returncode == 0
    assert task_id[:8] in r.stdout
    top = bgt(home, "--help").stdout
    assert "Examples:" in top
    assert "Exit codes" in top
    for cmd in (
        "get",
        "add",
        "ls",
        "show",
        "suspend",
        "resume",
        "cancel",
        "wait",
        "watch",
        "daemon",
        "serve-test",
    ):
        assert cmd in top
    assert "Examples:" in bgt(home, "get", "--help").stdout


def test_serve_test_runs_the_fault_server(home: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bgtransfer", "serve-test"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:")
        import urllib.request

        with urllib.request.urlopen(line.split()[-1] + "/gen/100", timeout=10) as resp:
            assert resp.read() == gen_bytes(100)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_get_in_a_terminal_draws_a_bar_and_ctrl_c_detaches(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    sock = f"bgt-{key}"
    # 1 MB/s: the resume is seen about 6 s before the end, so that Ctrl-C comes while the
    # transfer runs even when a loaded machine is slow to show it (at 1.5 MB/s: 4 s).
    url = server.url(f"/gen/8M?rate=1000000&cut=2000000&times=1&key={key}")
    dest = tmp_path / "tty.bin"
    cmd = (
        f"PYTHONPATH={os.pathsep.join(sys.path)} {sys.executable} -m bgtransfer --home {home} "
        f"get '{url}' -o {dest}; echo EXIT=$?; sleep 30"
    )

    def tmux(*args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", sock, *args], capture_output=True, text=True, timeout=10
        ).stdout

    tmux("new-session", "-d", "-x", "120", "-y", "30", cmd)
    try:
        screen = ""
        # Bounded waits on what the screen shows, generous for a loaded machine (starting
        # the daemon there can take many seconds): they end as soon as it is shown.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            screen = tmux("capture-pane", "-p")
            if "MiB" in screen and "resum" in screen:
                break
            time.sleep(0.2)
        assert "MiB" in screen, screen
        assert "tty.bin" in screen, screen
        assert "resum" in screen or "retrying" in screen, screen
        tmux("send-keys", "C-c")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            screen = tmux("capture-pane", "-p")
            if "EXIT=" in screen:
                break
            time.sleep(0.2)
        assert "detached" in screen, screen
        assert "bgtransfer watch" in screen, screen
        assert "bgtransfer cancel" in screen, screen  # how to follow it *and* how to stop it
        assert "EXIT=130" in screen
    finally:
        tmux("kill-server")
    r = bgt(home, "wait", json.loads(bgt(home, "ls", "--json").stdout)[0]["id"])
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == gen_bytes(8 << 20)


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        ('attachment; filename="report.pdf"', "report.pdf"),
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename=".bashrc"', "bashrc"),
        ("attachment; filename*=UTF-8''na%C3%AFve.txt", "naïve.txt"),
        ("inline", "1000"),
    ],
)
def test_remote_name_is_sanitised(
    server: FaultServer, home: Path, tmp_path: Path, key: str, disposition: str, expected: str
) -> None:
    from urllib.parse import quote

    url = server.url(f"/gen/1000?disposition={quote(disposition)}&key={key}")
    r = bgt(home, "get", url, "--remote-name", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / expected).read_bytes() == gen_bytes(1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([expected, "home"])
    # Without -J the server's name is never used.
    r = bgt(home, "get", url, "-o", str(tmp_path / "explicit"))
    assert (tmp_path / "explicit").exists()


def test_get_and_add_with_segments(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    size = 4 << 20
    url = server.url(f"/gen/{size}?rate=4000000&key={key}")
    r = bgt(home, "get", url, "-o", str(tmp_path / "s.bin"), "--segments", "4", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["segments"] == 4
    assert (tmp_path / "s.bin").read_bytes() == gen_bytes(size)
    ranged = [q.range for q in server.requests() if q.query.get("key") == key]
    assert ranged[0] is None
    assert len(ranged) == 4
    r = bgt(home, "add", url, "-o", str(tmp_path / "t.bin"), "--segments", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["segments"] == 2
    assert bgt(home, "wait", json.loads(r.stdout)["id"]).returncode == 0
    assert (tmp_path / "t.bin").read_bytes() == gen_bytes(size)
    for bad in ("0", "17", "x"):
        r = bgt(home, "get", url, "-o", str(tmp_path / "u.bin"), "--segments", bad)
        assert r.returncode == 64, (bad, r.stderr)
        assert "--segments" in r.stderr
    assert not (tmp_path / "u.bin").exists()
