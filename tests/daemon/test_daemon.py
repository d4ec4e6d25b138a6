"""Background sessions: a real daemon subprocess, started on demand, killed, restarted."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer import TaskState
from bgtransfer.testing import FaultServer, gen_bytes

from .conftest import daemon_pid, kill_daemon, run_cli

SIZE = 1 << 20
FAST: dict[str, Any] = {"retry_wait": 0.05, "max_retry_wait": 0.2}


def py(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


START_AND_EXIT = """
import sys, bgtransfer
home, url, dest = sys.argv[1:4]
s = bgtransfer.Session("app", home=home, background=True)
t = s.download(url, dest, retry_wait=0.05)
print(t.id)
"""


def wait_for(pred: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_download_outlives_the_script_and_a_later_script_learns_the_outcome(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "bg.bin"
    url = server.url(f"/gen/{4 * SIZE}?rate=4000000&cut=1500000&times=1&key={key}")
    done = py(START_AND_EXIT, str(home), url, str(dest))
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    assert not dest.exists()  # the script is gone; the transfer is still under way
    assert wait_for(dest.exists)
    assert dest.read_bytes() == gen_bytes(4 * SIZE)
    pid = daemon_pid(home)
    assert pid is not None
    assert pid != os.getpid()

    async def later() -> list[bgtransfer.Event]:
        async with bgtransfer.AsyncSession("app", home=home) as s:
            (t,) = await s.tasks()
            assert t.id == task_id
            assert t.state is TaskState.COMPLETED
            assert t.error is None
            got = []
            async for ev in s.events():
                got.append(ev)
                if ev.task_id == task_id and ev.state is TaskState.COMPLETED:
                    break
            await t.acknowledge()
            return got

    events = asyncio.run(asyncio.wait_for(later(), 30))
    assert events[-1].cursor is not None
    assert events[-1].error is None

    async def after_ack() -> list[bgtransfer.Event]:
        async with bgtransfer.AsyncSession("app", home=home) as s:
            got: list[bgtransfer.Event] = []

            async def collect() -> None:
                async for ev in s.events():
                    got.append(ev)  # noqa: PERF401 - appended as they stream in

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(collect(), 1.0)
            return got

    assert asyncio.run(after_ack()) == []


def test_caller_sigkilled_right_after_submit(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "k.bin"
    code = START_AND_EXIT + "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"
    proc = py(code, str(home), server.url(f"/gen/{SIZE}?rate=2000000&key={key}"), str(dest))
    assert proc.returncode == -signal.SIGKILL
    assert wait_for(dest.exists)
    assert dest.read_bytes() == gen_bytes(SIZE)


def test_events_survive_a_daemon_restart_and_since_replays(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    with bgtransfer.Session("ev", home=home) as s:
        t = s.download(server.url(f"/gen/{SIZE}?key={key}"), tmp_path / "e.bin", **FAST)
        t.wait(timeout=30)
    kill_daemon(home)

    async def replay() -> list[bgtransfer.Event]:
        async with bgtransfer.AsyncSession("ev", home=home) as s:
            out = []
            async for ev in s.events(since=0):
                out.append(ev)
                if ev.state is TaskState.COMPLETED:
                    return out
        return out

    evs = asyncio.run(asyncio.wait_for(replay(), 30))
    assert [e.task_id for e in evs] == [t.id] * len(evs)
    assert evs[-1].state is TaskState.COMPLETED
    cursors = [e.cursor for e in evs if e.cursor is not None]
    assert len(cursors) == len(evs)
    assert cursors == sorted(cursors)


def test_submit_is_idempotent(server: FaultServer, home: Path, tmp_path: Path, key: str) -> None:
    from bgtransfer._client import DaemonClient

    body = {
        "session": "idem",
        "url": server.url(f"/gen/{SIZE}?key={key}"),
        "path": str(tmp_path / "i.bin"),
        "idempotency_key": f"k-{key}",
    }

    async def twice() -> tuple[str, str, int]:
        c = DaemonClient(str(home))
        try:
            await c.ensure_running()
            a = await c.call("POST", "/v1/tasks", body=body)
            kill_daemon(home)  # the daemon dies between the call and a retry
            b = await c.call("POST", "/v1/tasks", body=body)
            listed = await c.call("GET", "/v1/tasks", params={"session": "idem"})
            return a["id"], b["id"], len(listed)
        finally:
            await c.close()

    first, second, count = asyncio.run(twice())
    assert first == second
    assert count == 1


def test_daemon_commands_status_stop_and_single_instance(home: Path, tmp_path: Path) -> None:
    r = run_cli(home, "daemon", "status", "--json")
    assert r.returncode == 3
    assert json.loads(r.stdout)["running"] is False
    r = run_cli(home, "daemon", "start")
    assert r.returncode == 0, r.stderr
    assert "started" in r.stderr
    status = json.loads(run_cli(home, "daemon", "status", "--json").stdout)
    assert status["running"] is True
    assert status["pid"] == daemon_pid(home)
    assert set(status["tasks"]) == {"running", "suspended", "canceling", "completed"}
    assert "already running" in run_cli(home, "daemon", "start").stderr
    second = run_cli(home, "daemon", "run", timeout=20)
    assert second.returncode == 0
    assert "already running" in second.stderr
    assert daemon_pid(home) == status["pid"]
    other = tmp_path / "other-home"
    try:
        assert run_cli(other, "daemon", "start").returncode == 0
        assert daemon_pid(other) not in (None, status["pid"])
    finally:
        kill_daemon(other)
    t0 = time.monotonic()
    r = run_cli(home, "daemon", "stop")
    assert r.returncode == 0
    assert "stopped" in r.stderr
    assert time.monotonic() - t0 < 5
    assert daemon_pid(home) is None
    assert run_cli(home, "daemon", "stop").stderr.strip() == "daemon is not running"


def test_graceful_stop_checkpoints_and_restart_continues(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "g.bin"
    size = 8 * SIZE
    with bgtransfer.Session("g", home=home) as s:
        t = s.download(server.url(f"/gen/{size}?rate=4000000&key={key}"), dest, **FAST)
        assert wait_for(lambda: t.bytes_received > 500_000, 10)
        t0 = time.monotonic()
        assert run_cli(home, "daemon", "stop").returncode == 0
        assert time.monotonic() - t0 < 2.5
        # The next call starts the daemon again; it picks the task up from its checkpoint.
        t.wait(timeout=60)
        assert t.error is None
    assert dest.read_bytes() == gen_bytes(size)
    reqs = [r for r in server.requests("/gen/") if r.query.get("key") == key]
    assert len(reqs) >= 2
    assert reqs[-1].range is not None


def test_suspend_resume_cancel_through_the_daemon(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    with bgtransfer.Session("c", home=home) as s:
        t = s.download(
            server.url(f"/gen/{4 * SIZE}?rate=2000000&key={key}"), tmp_path / "s", **FAST
        )
        assert wait_for(lambda: t.bytes_received > 0, 10)
        t.suspend()
        assert t.state is TaskState.SUSPENDED
        kill_daemon(home)
        again = s.task(t.id)  # restarts the daemon: a suspended task stays suspended
        assert again.state is TaskState.SUSPENDED
        again.resume()
        assert again.state is TaskState.RUNNING
        again.cancel()
        assert isinstance(again.error, bgtransfer.Cancelled)
        assert not (tmp_path / "s").exists()
        assert [p for p in os.listdir(tmp_path) if p.startswith(".s.")] == []
        with pytest.raises(bgtransfer.InvalidTransition):
            again.resume()
        with pytest.raises(bgtransfer.TaskNotFound):
            s.task("0" * 32)
        with pytest.raises(bgtransfer.InvalidRequest):
            s.download("ftp://x/y", tmp_path / "bad")


def test_completion_hook_runs_once_with_its_environment(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    out = tmp_path / "hook.txt"
    script = tmp_path / "hook.py"
    script.write_text(
        "import os, sys\n"
        f"with open({str(out)!r}, 'a') as f:\n"
        "    keys = ['BGTRANSFER_TASK_ID', 'BGTRANSFER_STATE',\n"
        "            'BGTRANSFER_PATH', 'BGTRANSFER_ERROR']\n"
        "    f.write('|'.join([sys.argv[1]] + [os.environ[k] for k in keys]) + '\\n')\n"
    )
    dest = tmp_path / "h.bin"
    with bgtransfer.Session("hook", home=home) as s:
        t = s.download(
            server.url(f"/gen/{SIZE}?key={key}"),
            dest,
            on_complete=[sys.executable, str(script), "arg1"],
        )
        t.wait(timeout=30)
        bad = s.download(
            server.url(f"/gen/{SIZE}?status=404&key={key}"),
            tmp_path / "missing.bin",
            on_complete=[sys.executable, str(script), "arg2"],
        )
        bad.wait(timeout=30)
    assert wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 2)

    def hooks_recorded() -> bool:
        import sqlite3

        con = sqlite3.connect(f"file:{home / 'bgtransfer.sqlite3'}?mode=ro", uri=True)
        try:
            states = [r[0] for r in con.execute("SELECT hook_state FROM tasks")]
        finally:
            con.close()
        return states == ["done", "done"]

    # Hooks are at-least-once: one killed before its end is recorded runs again. Here both
    # ended, so a restart must not run them again.
    assert wait_for(hooks_recorded, 10)
    kill_daemon(home)
    run_cli(home, "daemon", "start")  # a restart must not run finished hooks again
    time.sleep(0.5)
    lines = sorted(out.read_text().splitlines())
    assert lines[0] == f"arg1|{t.id}|succeeded|{dest}|"
    assert lines[1].startswith(
        f"arg2|{bad.id}|failed|{tmp_path / 'missing.bin'}|server answered 404"
    )
    assert len(lines) == 2
    log = (home / "daemon.log").read_text()
    assert "completion hook" in log


def test_on_complete_needs_background_and_an_argv(tmp_path: Path) -> None:
    from bgtransfer._tasks import build_row

    with (
        bgtransfer.Session("f", home=tmp_path / "h", background=False) as s,
        pytest.raises(bgtransfer.InvalidRequest, match="daemon"),
    ):
        s.download("http://127.0.0.1:9/x", tmp_path / "x", on_complete=["/bin/true"])
    with pytest.raises(bgtransfer.InvalidRequest, match="argv"):
        build_row("s", "http://127.0.0.1:9/x", tmp_path / "y", background=True, on_complete="ls -l")


def test_socket_modes_and_bad_requests(home: Path) -> None:
    run_cli(home, "daemon", "start")
    sock_path = home / "control.sock"
    assert stat.S_ISSOCK(sock_path.stat().st_mode)
    assert sock_path.stat().st_mode & 0o777 == 0o600
    assert home.stat().st_mode & 0o777 == 0o700
    tcp = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
    pid = daemon_pid(home)
    fds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    inodes = {f[8:-1] for f in fds if f.startswith("socket:[")}
    listening = [ln.split() for ln in tcp.splitlines()[1:] if ln.split()[3] == "0A"]
    assert not [ln for ln in listening if ln[9] in inodes], "the daemon must not listen on TCP"

    def raw(request: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(5)
            c.connect(str(sock_path))
            c.sendall(request)
            chunks = []
            while True:
                b = c.recv(65536)
                if not b:
                    break
                chunks.append(b)
            return b"".join(chunks)

    def post(body: bytes) -> bytes:
        head = "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        return raw(head.encode() + body)

    assert b" 400 " in post(b"{not json").split(b"\r\n")[0]
    r = post(
        json.dumps(
            {"session": "x", "url": "http://127.0.0.1:9/", "path": "/tmp/x", "evil": 1}
        ).encode()
    )
    assert b" 400 " in r.split(b"\r\n")[0]
    assert b"unknown fields: evil" in r
    r = post(json.dumps({"session": "x", "url": "ftp://h/", "path": "/tmp/x"}).encode())
    assert b" 400 " in r.split(b"\r\n")[0]
    assert b"invalid_request" in r
    r = raw(b"GET /v1/tasks/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b" 404 " in r.split(b"\r\n")[0]
    assert b"task_not_found" in r
    big = post(b"[" + b"1," * (1 << 20) + b"1]")
    assert b" 413 " in big.split(b"\r\n")[0]
    assert daemon_pid(home) == pid  # still alive after all of that


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root")
def test_other_users_are_refused(tmp_path: Path) -> None:
    home = Path("/tmp") / f"bgt-perm-{os.getpid()}"
    home.mkdir(mode=0o700)
    try:
        assert run_cli(home, "daemon", "start").returncode == 0
        probe = (
            "import socket, sys\n"
            "c = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            "    c.connect(sys.argv[1])\n"
            "except PermissionError:\n"
            "    print('EACCES'); raise SystemExit\n"
            "c.sendall(b'GET /v1/status HTTP/1.1\\r\\nHost: x\\r\\n'\n"
            "          b'Connection: close\\r\\n\\r\\n')\n"
            "print(c.recv(4096).split(b'\\r\\n')[0].decode())\n"
        )
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        r = subprocess.run(
            [*as_nobody, sys.executable, "-c", probe, str(home / "control.sock")],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert r.stdout.strip() == "EACCES", r.stderr
        # Defence in depth: even with the file modes opened up, the peer uid check refuses.
        os.chmod(home, 0o711)
        os.chmod(home / "control.sock", 0o666)
        r = subprocess.run(
            [*as_nobody, sys.executable, "-c", probe, str(home / "control.sock")],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert "403" in r.stdout, (r.stdout, r.stderr)
    finally:
        kill_daemon(home)
        shutil.rmtree(home, ignore_errors=True)


def test_pending_hook_runs_after_a_crash_between_completion_and_hook(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    """The crash window: COMPLETED was committed with the hook pending, then the daemon died."""
    import sqlite3

    out = tmp_path / "late.txt"
    dest = tmp_path / "late.bin"
    with bgtransfer.Session("late", home=home) as s:
        t = s.download(
            server.url(f"/gen/{SIZE}?key={key}"),
            dest,
            on_complete=[sys.executable, "-c", f"open({str(out)!r}, 'a').write('ran\\n')"],
        )
        t.wait(timeout=30)
    assert wait_for(out.exists)
    kill_daemon(home)
    out.unlink()
    con = sqlite3.connect(home / "bgtransfer.sqlite3")
    con.execute("UPDATE tasks SET hook_state='pending' WHERE id=?", (t.id,))
    con.commit()
    con.close()
    assert run_cli(home, "daemon", "start").returncode == 0
    assert wait_for(out.exists, 15)
    time.sleep(0.3)
    assert out.read_text() == "ran\n"


def test_daemon_install_writes_a_user_unit(home: Path, tmp_path: Path) -> None:
    r = run_cli(home, "daemon", "install", "--unit-dir", str(tmp_path / "units"))
    assert r.returncode == 0, r.stderr
    unit = (tmp_path / "units" / "bgtransfer.service").read_text()
    assert r.stdout.strip() == str(tmp_path / "units" / "bgtransfer.service")
    assert f"ExecStart={sys.executable} -m bgtransfer --home {home} daemon run" in unit
    assert "NoNewPrivileges=yes" in unit
    assert "systemctl --user enable --now bgtransfer.service" in r.stderr


def test_long_home_gets_a_private_socket_dir(tmp_path: Path) -> None:
    from bgtransfer._daemon._paths import socket_path

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    home = deep / "home"
    home.mkdir(mode=0o700)
    path = socket_path(str(home))
    assert len(os.fsencode(path)) <= 100
    base = Path(path).parent
    assert base == Path(f"/tmp/bgtransfer-{os.geteuid()}")
    assert base.stat().st_mode & 0o777 == 0o700
    try:
        assert run_cli(home, "daemon", "start").returncode == 0
        status = json.loads(run_cli(home, "daemon", "status", "--json").stdout)
        assert status["socket"] == path
        assert Path(path).stat().st_mode & 0o777 == 0o600
    finally:
        kill_daemon(home)


def test_limits_from_the_daemon_environment(home: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.update({"BGTRANSFER_MAX_ACTIVE": "32", "BGTRANSFER_MAX_PER_HOST": "nonsense"})
    r = subprocess.run(
        [sys.executable, "-m", "bgtransfer", "--home", str(home), "daemon", "start"],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    status = json.loads(run_cli(home, "daemon", "status", "--json").stdout)
    assert status["limits"] == {"max_active": 32, "max_per_host": 6}
    assert "ignoring BGTRANSFER_MAX_PER_HOST='nonsense'" in (home / "daemon.log").read_text()


def test_batch_submit_pagination_and_prefix_lookup(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    items = [
        {"url": server.url(f"/gen/100?key={key}{i}"), "path": tmp_path / f"b{i}"}
        for i in range(1500)
    ]
    with bgtransfer.Session("batch", home=home) as s:
        with pytest.raises(bgtransfer.InvalidRequest, match="item 1 has no 'path'"):
            s.download_many([items[0], {"url": items[1]["url"]}])
        assert s.tasks() == []  # nothing created when one item is bad
        tasks = s.download_many(items)
        assert len(tasks) == 1500
        assert len({t.id for t in tasks}) == 1500
        for t in tasks[:20] + tasks[-20:]:
            t.wait(timeout=60)
            assert t.error is None
    page = json.loads(run_cli(home, "ls", "--json", "--limit", "10", "--offset", "5").stdout)
    assert [t["id"] for t in page] == [t.id for t in tasks[5:15]]
    shown = json.loads(run_cli(home, "show", tasks[700].id[:10], "--json").stdout)
    assert shown["id"] == tasks[700].id
    r = run_cli(home, "show", "xyz")
    assert r.returncode == 4


def test_wait_all_covers_a_batch_in_one_long_poll(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    items = [
        {"url": server.url(f"/gen/3000?seed={i}&key={key}{i}"), "path": tmp_path / f"w{i}"}
        for i in range(300)
    ]
    with bgtransfer.Session("waitall", home=home) as s:
        tasks = s.download_many(items)
        done = s.wait_all(tasks, timeout=60)
        assert done == tasks
        assert all(t.state is TaskState.COMPLETED and t.error is None for t in done)
        for i in range(300):
            assert (tmp_path / f"w{i}").read_bytes() == gen_bytes(3000, seed=i)
        # A task that cannot finish in time: TimeoutError, and the task goes on.
        slow = s.download(server.url(f"/gen/1000?stall_headers=5&key={key}s"), tmp_path / "s")
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            s.wait_all([tasks[0], slow], timeout=0.5)
        assert time.monotonic() - t0 < 3
        slow.cancel()
        with (
            bgtransfer.Session("other", home=home) as other,
            pytest.raises(bgtransfer.InvalidRequest, match="another session object"),
        ):
            other.wait_all(tasks[:1])


def test_wait_endpoint_rejects_bad_bodies_and_unknown_ids(home: Path) -> None:
    run_cli(home, "daemon", "start")

    def post(body: object) -> tuple[int, bytes]:
        data = json.dumps(body).encode()
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(10)
            c.connect(str(home / "control.sock"))
            c.sendall(
                b"POST /v1/wait HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            chunks = []
            while b := c.recv(65536):
                chunks.append(b)
        reply = b"".join(chunks)
        return int(reply.split(b" ", 2)[1]), reply

    assert post({"timeout": 1})[0] == 400
    assert post({"ids": []})[0] == 400
    assert post({"ids": ["a"] * 10_001})[0] in (400, 413)
    assert post({"ids": ["a"], "timeout": 301})[0] == 400
    assert post({"ids": ["a"], "timeout": "1"})[0] == 400
    code, reply = post({"ids": ["0" * 32], "timeout": 1})
    assert code == 404
    assert b"task_not_found" in reply
