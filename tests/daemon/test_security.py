"""What bgtransfer trusts (issue 11, "the home and the control plane"): real homes owned by
other uids, real symlinks, a real socket served by another uid, a real daemon subprocess.

Tests that need a second uid run as root (CI does) and skip otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer.testing import FaultServer

from .conftest import daemon_connections, daemon_pid, kill_daemon, run_cli

OTHER = 65534  # nobody
as_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
AS_OTHER = ("setpriv", f"--reuid={OTHER}", f"--regid={OTHER}", "--clear-groups")


def wait_for(pred: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def env_with(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **extra}


def cli(
    *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "bgtransfer", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or env_with(),
    )


def alive(pid: int) -> bool:
    """Running (not a zombie waiting for a parent that does not reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory other uids can enter (pytest's tmp_path is 0700)."""
    d = Path("/tmp") / f"bgt-sec-{os.getpid()}-{time.monotonic_ns()}"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


# -- 1. the home ---------------------------------------------------------------------------


@as_root
def test_home_of_another_user_is_refused_everywhere(shared_tmp: Path) -> None:
    """Another user created the home first: --home, BGTRANSFER_HOME, home= and the default
    all refuse it, and nothing in it is touched."""
    home = shared_tmp / "x"
    with bgtransfer.Session("p", home=home, background=False):
        pass  # a real store, as the other user would leave it
    for p in [home, *home.rglob("*")]:
        os.chown(p, OTHER, OTHER, follow_symlinks=False)
    os.chmod(home, 0o755)
    before = sorted(p.name for p in home.iterdir())

    r = cli("--home", str(home), "daemon", "start")
    assert r.returncode == 6, (r.returncode, r.stderr)
    assert "refusing the home" in r.stderr
    assert "uid 65534" in r.stderr
    assert "not to you" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("ls", env=env_with(BGTRANSFER_HOME=str(home)))
    assert r.returncode == 6
    assert "refusing the home" in r.stderr
    r = cli("daemon", "run", env=env_with(BGTRANSFER_HOME=str(home)))
    assert r.returncode == 6
    assert "refusing the home" in r.stderr
    # The default home: platformdirs' user state dir, from XDG_STATE_HOME.
    state = shared_tmp / "state"
    state.mkdir()
    os.symlink(home, state / "bgtransfer")
    r = cli("ls", env=env_with(XDG_STATE_HOME=str(state)))
    assert r.returncode == 6
    assert "refusing the home" in r.stderr
    with pytest.raises(bgtransfer.UnsafeHome, match="not to you"):
        bgtransfer.Session("app", home=home)
    with pytest.raises(bgtransfer.UnsafeHome):
        bgtransfer.Session("app", home=home, background=False)
    assert issubclass(bgtransfer.UnsafeHome, bgtransfer.TransferError)
    assert sorted(p.name for p in home.iterdir()) == before
    assert daemon_pid(home) is None


@as_root
def test_a_planted_hook_in_another_users_home_never_runs(
    server: FaultServer, shared_tmp: Path, key: str
) -> None:
    home = shared_tmp / "planted"
    ran = shared_tmp / "hook-ran"
    with bgtransfer.Session("p", home=home) as s:
        t = s.download(server.url(f"/gen/100?key={key}"), shared_tmp / "f.bin")
        t.wait(timeout=30)
    kill_daemon(home)
    # The "other user" now owns it and has put a hook in the store, pending.
    con = sqlite3.connect(home / "bgtransfer.sqlite3")
    con.execute(
        "UPDATE tasks SET on_complete=?, hook_state='pending'",
        (json.dumps(["/bin/sh", "-c", f"touch {ran}"]),),
    )
    con.commit()
    con.close()
    for p in [home, *home.rglob("*")]:
        os.chown(p, OTHER, OTHER, follow_symlinks=False)
    r = cli("--home", str(home), "ls")
    assert r.returncode == 6, r.stderr
    r = cli("--home", str(home), "daemon", "run")
    assert r.returncode == 6, r.stderr
    time.sleep(0.5)
    assert not ran.exists()
    assert daemon_pid(home) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root owns the directory used here")
def test_a_system_directory_is_not_a_users_home() -> None:
    """Without root, a directory of another user that exists everywhere: /usr/share."""
    with pytest.raises(bgtransfer.UnsafeHome, match="belongs to uid 0"):
        bgtransfer.resolve_home("/usr/share")
    r = cli("--home", "/usr/share", "ls")
    assert r.returncode == 6
    assert "refusing the home /usr/share" in r.stderr


def test_writable_homes_are_refused_and_created_homes_are_private(tmp_path: Path) -> None:
    for mode in (0o777, 0o770, 0o720, 0o702):
        home = tmp_path / f"m{mode:o}"
        home.mkdir()
        os.chmod(home, mode)
        r = run_cli(home, "ls")
        assert r.returncode == 6, (oct(mode), r.stderr)
        assert "group- or world-writable" in r.stderr
        assert f"chmod go-w {home}" in r.stderr
        assert list(home.iterdir()) == []
        with pytest.raises(bgtransfer.UnsafeHome, match="writable"):
            bgtransfer.resolve_home(home)
    # A 0755 home of your own is fine.
    ok = tmp_path / "ok"
    ok.mkdir()
    os.chmod(ok, 0o755)
    assert bgtransfer.resolve_home(ok) == str(ok)
    # A home bgtransfer creates is 0700, whatever the umask.
    made = tmp_path / "a" / "b" / "made"
    r = subprocess.run(
        [sys.executable, "-m", "bgtransfer", "--home", str(made), "daemon", "status"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env_with(),
        preexec_fn=lambda: os.umask(0),
    )
    assert r.returncode == 3, r.stderr
    assert made.stat().st_mode & 0o777 == 0o700
    # A home that is a file: a clear message, no traceback.
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = cli("ls", env=env_with(BGTRANSFER_HOME=str(afile)))
    assert r.returncode == 6
    assert "not a directory" in r.stderr
    assert "Traceback" not in r.stderr


# -- 2. files in the home ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["daemon.lock", "daemon.log", "bgtransfer.sqlite3"])
def test_symlinked_files_in_the_home_leave_their_target_untouched(
    home: Path, tmp_path: Path, name: str
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.chmod(victim, 0o644)
    (home / name).symlink_to(victim)
    r = run_cli(home, "daemon", "start")
    assert r.returncode == 6, (r.returncode, r.stderr)
    assert f"refusing {home / name}: it is a symbolic link" in r.stderr
    assert "Traceback" not in r.stderr
    if name != "daemon.log":  # `daemon run` logs to its stderr, not to daemon.log
        r = run_cli(home, "daemon", "run")  # the daemon itself refuses it too
        assert r.returncode in (1, 6)
        assert "it is a symbolic link" in r.stderr
    assert victim.read_text() == "precious\n"
    assert victim.stat().st_mode & 0o777 == 0o644
    if name == "bgtransfer.sqlite3":
        with pytest.raises(bgtransfer.UnsafeHome, match="symbolic link"):
            bgtransfer.Session("fg", home=home, background=False).__enter__()
        assert victim.read_text() == "precious\n"
    (home / name).unlink()  # daemon_pid reads daemon.lock
    assert daemon_pid(home) is None


def test_hard_linked_log_and_foreign_files_are_refused(home: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.link(victim, home / "daemon.log")
    r = run_cli(home, "daemon", "start")
    assert r.returncode == 6, r.stderr
    assert "hard links" in r.stderr
    assert victim.read_text() == "precious\n"
    (home / "daemon.log").unlink()
    # A FIFO where the log should be cannot hang the client.
    os.mkfifo(home / "daemon.log")
    r = run_cli(home, "daemon", "start", timeout=20)
    assert r.returncode == 6, r.stderr
    assert "not a regular file" in r.stderr
    (home / "daemon.log").unlink()
    # Something that is not a socket where the socket goes is never removed.
    (home / "control.sock").write_text("not a socket\n")
    r = run_cli(home, "daemon", "start")
    assert r.returncode == 6, r.stderr
    assert "refusing to replace" in r.stderr
    assert "not a socket of this user" in r.stderr
    assert (home / "control.sock").read_text() == "not a socket\n"
    assert daemon_pid(home) is None


def test_owner_locks_directory_must_not_be_a_symlink(home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (home / "owners").symlink_to(elsewhere)
    with (
        pytest.raises(bgtransfer.UnsafeHome, match="not a directory"),
        bgtransfer.Session("fg", home=home, background=False),
    ):
        pass
    assert list(elsewhere.iterdir()) == []


# -- 3. the client checks who serves the socket --------------------------------------------

FOREIGN_SERVER = r"""
import os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
os.chmod(path, 0o777)
s.listen(8)
print("ready", os.getuid(), flush=True)
s.settimeout(30)
conns = received = 0
try:
    while True:
        c, _ = s.accept()
        conns += 1
        c.settimeout(3)
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                received += len(b)
        except OSError:
            pass
        c.close()
        print("conn", conns, received, flush=True)
except OSError:
    pass
"""


@as_root
def test_client_sends_nothing_to_a_socket_served_by_another_user(
    home: Path, shared_tmp: Path
) -> None:
    foreign_dir = shared_tmp / "foreign"
    foreign_dir.mkdir()
    os.chown(foreign_dir, OTHER, OTHER)
    sock_path = foreign_dir / "s.sock"
    proc = subprocess.Popen(
        [*AS_OTHER, sys.executable, "-I", "-c", FOREIGN_SERVER, str(sock_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["ready", str(OTHER)]
        # However the path came to point there (a planted link, a long-home fallback dir),
        # the client must check the peer, not the path.
        (home / "control.sock").symlink_to(sock_path)
        r = run_cli(home, "ls")
        assert r.returncode == 6, (r.returncode, r.stderr)
        assert "served by uid 65534" in r.stderr
        assert "nothing was sent" in r.stderr
        assert proc.stdout.readline().split() == ["conn", "1", "0"]
        with pytest.raises(bgtransfer.UnsafeHome, match="served by uid 65534"):
            bgtransfer.Session("app", home=home)
        assert proc.stdout.readline().split() == ["conn", "2", "0"]
        assert daemon_pid(home) is None  # and no daemon was started behind it
    finally:
        proc.kill()
        proc.communicate()


# -- 4. the daemon's socket, home and lock --------------------------------------------------


def test_daemon_leaves_a_socket_that_is_not_its_own_and_stops(home: Path) -> None:
    assert run_cli(home, "daemon", "start").returncode == 0
    pid = daemon_pid(home)
    assert pid is not None
    sock = home / "control.sock"
    os.rename(sock, home / "moved.sock")
    squatter = socket.socket(socket.AF_UNIX)
    try:
        squatter.bind(str(sock))
        squatter.listen(1)
        ino = os.lstat(sock).st_ino
        assert wait_for(lambda: not alive(pid), 15), "the daemon must notice its socket is gone"
        assert sock.exists(), "the daemon removed a socket that was not its own"
        assert os.lstat(sock).st_ino == ino
    finally:
        squatter.close()
    log = (home / "daemon.log").read_text()
    assert f"stopping: the control socket {sock} was removed or replaced" in log


def test_daemon_stops_when_its_home_is_replaced(home: Path, tmp_path: Path) -> None:
    assert run_cli(home, "daemon", "start").returncode == 0
    old_pid = daemon_pid(home)
    assert old_pid is not None
    os.kill(old_pid, signal.SIGSTOP)  # so the new daemon is up before the old one looks
    try:
        moved = tmp_path / "home.old"
        os.rename(home, moved)
        home.mkdir(mode=0o700)
        assert run_cli(home, "daemon", "start").returncode == 0
        new_pid = daemon_pid(home)
        assert new_pid not in (None, old_pid)
    finally:
        os.kill(old_pid, signal.SIGCONT)
    assert wait_for(lambda: not alive(old_pid), 15)
    assert f"stopping: the home {home} was replaced by another directory" in (
        (moved / "daemon.log").read_text()
    )
    # The old daemon did not take the new one's socket with it.
    assert (home / "control.sock").exists()
    status = json.loads(run_cli(home, "daemon", "status", "--json").stdout)
    assert status["running"] is True
    assert status["pid"] == new_pid
    kill_daemon(moved)


def test_daemon_stops_when_its_home_is_deleted(home: Path, tmp_path: Path) -> None:
    assert run_cli(home, "daemon", "start").returncode == 0
    pid = daemon_pid(home)
    assert pid is not None
    log_fd = os.open(home / "daemon.log", os.O_RDONLY)  # the log outlives the unlink
    try:
        subprocess.run(["rm", "-rf", str(home)], check=True)
        assert wait_for(lambda: not alive(pid), 15)
        text = os.pread(log_fd, 1 << 20, 0).decode()
    finally:
        os.close(log_fd)
    assert f"stopping: the home {home} was deleted" in text
    home.mkdir(mode=0o700)  # for the fixture's cleanup


def test_a_stopped_daemon_is_reported_not_doubled(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    with bgtransfer.Session("z", home=home) as s:
        t = s.download(server.url(f"/gen/{1 << 22}?rate=100000&key={key}"), tmp_path / "z")
    pid = daemon_pid(home)
    assert pid is not None
    waiter = subprocess.Popen(
        [sys.executable, "-m", "bgtransfer", "--home", str(home), "wait", t.id],
        stderr=subprocess.PIPE,
        text=True,
        env=env_with(),
    )
    # The waiter is in its long poll: the only client of the daemon now.
    assert wait_for(lambda: waiter.poll() is None and daemon_connections(home) >= 1, 30)
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = run_cli(home, "ls")
        took = time.monotonic() - t0
        assert r.returncode == 6, r.stderr
        assert f"daemon pid {pid} holds the lock of {home} but does not answer: stopped?" in (
            r.stderr
        )
        assert f"kill -CONT {pid}" in r.stderr
        assert took < 15, took  # not a 20 s wait for a start that cannot happen
        _, err = waiter.communicate(timeout=20)
        assert waiter.returncode == 6, err
        assert "does not answer: stopped?" in err
        assert daemon_pid(home) == pid
        assert "already running" not in (home / "daemon.log").read_text()  # no second start
    finally:
        os.kill(pid, signal.SIGCONT)
        if waiter.poll() is None:
            waiter.kill()


def test_start_failure_is_reported_at_once_with_the_log_line(home: Path) -> None:
    (home / "bgtransfer.sqlite3").write_bytes(b"this is not a database, " * 100)
    os.chmod(home / "bgtransfer.sqlite3", 0o600)
    t0 = time.monotonic()
    r = run_cli(home, "ls")
    took = time.monotonic() - t0
    assert r.returncode == 6, r.stderr
    assert "the daemon could not start" in r.stderr
    assert "file is not a database" in r.stderr  # the log's last line, quoted
    assert f"see {home / 'daemon.log'}" in r.stderr
    assert took < 15, took
    assert daemon_pid(home) is None


def _other_uid_can_import_bgtransfer() -> bool:
    """Whether the other uid can run this checkout's bgtransfer: a clone inside a 0700
    directory (mktemp -d) is out of its reach, and that is the checkout's doing, not ours."""
    r = subprocess.run(
        [*AS_OTHER, sys.executable, "-c", "import bgtransfer, aiohttp"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    return r.returncode == 0


@as_root
def test_read_only_home_is_reported_clearly(shared_tmp: Path) -> None:
    if not _other_uid_can_import_bgtransfer():
        pytest.skip(f"uid {OTHER} cannot read this checkout or its venv (a parent is private)")
    api = (
        "import sys, bgtransfer\n"
        "try:\n"
        "    bgtransfer.Session('app', home=sys.argv[1])\n"
        "except bgtransfer.TransferError as exc:\n"
        "    print(type(exc).__name__, exc.message)\n"
    )
    # A home whose owner cannot write it (run as the other uid, in a home of its own).
    home = shared_tmp / "ro"
    home.mkdir()
    os.chown(home, OTHER, OTHER)
    os.chmod(home, 0o500)
    r = cli("--home", str(home), "ls", env=env_with(HOME=str(shared_tmp)), prefix=AS_OTHER)
    assert r.returncode == 6, r.stderr
    assert "not writable" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run(
        [*AS_OTHER, sys.executable, "-c", api, str(home)],
        capture_output=True, text=True, timeout=60, env=env_with(HOME=str(shared_tmp)),
    )  # fmt: skip
    assert r.stdout.strip() == (
        f"DaemonUnavailable cannot start the daemon: cannot write its log "
        f"{home / 'daemon.log'}: Permission denied"
    ), r.stderr
    # A home on a read-only file system, with a log from before.
    mnt = shared_tmp / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        home = mnt / "home"
        home.mkdir(mode=0o700)
        (home / "daemon.log").touch(mode=0o600)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        t0 = time.monotonic()
        r = run_cli(home, "ls")
        assert r.returncode == 6, r.stderr
        assert "Traceback" not in r.stderr
        r = subprocess.run(
            [sys.executable, "-c", api, str(home)],
            capture_output=True, text=True, timeout=60, env=env_with(),
        )  # fmt: skip
        assert "cannot write its log" in r.stdout, (r.stdout, r.stderr)
        assert "Read-only file system" in r.stdout
        assert time.monotonic() - t0 < 20
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# -- 5. completion hooks --------------------------------------------------------------------

HOOK = r"""
import json, os, subprocess, sys, time
out = sys.argv[1]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
with open(out, "a") as f:
    f.write(json.dumps({"env": dict(os.environ), "pid": os.getpid(), "pgid": os.getpgid(0),
                        "grandchild": child.pid}) + "\n")
print("hook output line", flush=True)
time.sleep(300)
"""


def test_hook_runs_in_its_own_group_with_a_small_env_and_a_timeout_kills_the_group(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    out = tmp_path / "hook.jsonl"
    env = env_with(BGTRANSFER_HOOK_TIMEOUT="2", AWS_SECRET_ACCESS_KEY="hunter2", LC_TIME="C.UTF-8")
    r = subprocess.run(
        [sys.executable, "-m", "bgtransfer", "--home", str(home), "daemon", "start"],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    dpid = daemon_pid(home)
    assert dpid is not None
    with bgtransfer.Session("hooks", home=home) as s:
        t = s.download(
            server.url(f"/gen/100?key={key}"),
            tmp_path / "h.bin",
            on_complete=[sys.executable, str(script), str(out)],
        )
        t.wait(timeout=30)
        assert wait_for(lambda: out.exists() and out.read_text().strip(), 15)
        info = json.loads(out.read_text().splitlines()[0])
        # The daemon answers while the hook (and its grandchild holding the log) runs.
        assert s.task(t.id).error is None
    hook_env = info["env"]
    assert "AWS_SECRET_ACCESS_KEY" not in hook_env
    assert "PYTHONPATH" not in hook_env
    assert hook_env["LC_TIME"] == "C.UTF-8"
    assert hook_env["BGTRANSFER_TASK_ID"] == t.id
    assert hook_env["BGTRANSFER_STATE"] == "succeeded"
    allowed = {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "XDG_RUNTIME_DIR",
        "DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY",
    }  # fmt: skip
    extra = {k for k in hook_env if k not in allowed and not k.startswith(("LC_", "BGTRANSFER_"))}
    assert extra <= {"LC_CTYPE"}, extra  # Python may set LC_CTYPE when it coerces C
    assert info["pgid"] == info["pid"] != os.getpgid(dpid)
    # The timeout kills the whole group: the hook and the grandchild that kept the log open.
    assert wait_for(lambda: not alive(info["pid"]) and not alive(info["grandchild"]), 20)

    def hook_state() -> str | None:
        con = sqlite3.connect(f"file:{home / 'bgtransfer.sqlite3'}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT hook_state FROM tasks WHERE id=?", (t.id,)).fetchone()
        finally:
            con.close()
        return None if row is None else str(row[0])

    assert wait_for(lambda: hook_state() == "timeout", 10)
    log = (home / "daemon.log").read_text()
    assert "hook output line" in log
    assert "timed out after 2 s; its process group was killed" in log
    # Recorded as timed out: a restart does not run it again.
    kill_daemon(home)
    assert run_cli(home, "daemon", "start").returncode == 0
    time.sleep(1.5)
    assert len(out.read_text().splitlines()) == 1


# -- 6. the control API ---------------------------------------------------------------------


def raw(sock_path: Path, request: bytes, timeout: float = 10) -> bytes:
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(timeout)
        c.connect(str(sock_path))
        c.sendall(request)
        chunks = []
        while True:
            b = c.recv(65536)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)


def answer(data: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_s, _, rest = rest.partition(b"\r\n")
            size = int(size_s, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    return int(lines[0].split()[1]), headers, json.loads(body)


def request(method: str, target: str, body: bytes | None = None) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


def test_every_control_api_error_is_json(home: Path) -> None:
    assert run_cli(home, "daemon", "start").returncode == 0
    sock = home / "control.sock"
    pid = daemon_pid(home)

    def error_of(data: bytes) -> tuple[int, str, str]:
        status, headers, body = answer(data)
        assert headers["content-type"].startswith("application/json"), headers
        return status, body["error"]["code"], body["error"]["message"]

    assert error_of(raw(sock, request("GET", "/v1/nothing"))) == (
        404, "not_found", "no such endpoint: GET /v1/nothing",
    )  # fmt: skip
    data = raw(sock, request("DELETE", "/v1/status"))
    assert error_of(data)[:2] == (405, "method_not_allowed")
    assert "GET" in answer(data)[1]["allow"]
    big = b'{"session": "s", "pad": "' + b"a" * (2 << 20) + b'"}'
    assert error_of(raw(sock, request("POST", "/v1/tasks", big)))[:2] == (
        413, "request_too_large",
    )  # fmt: skip
    deep = b"[" * 100_000 + b"]" * 100_000
    status, code, message = error_of(raw(sock, request("POST", "/v1/tasks", deep)))
    assert (status, code) == (400, "invalid_request")
    assert "nested too deeply" in message
    for bad in (b"1e999", b"NaN", b"-Infinity", b"1" + b"0" * 30):
        body = b'{"ids": ["x"], "timeout": ' + bad + b"}"
        status, code, message = error_of(raw(sock, request("POST", "/v1/wait", body)))
        assert (status, code) == (400, "invalid_request"), bad
        assert "bad number" in message
    for target in (
        "/v1/tasks/x/wait?timeout=nan",
        "/v1/tasks/x/wait?timeout=abc",
        "/v1/tasks?limit=99999999999999999999999",
        "/v1/events?session=s&since=abc",
    ):
        assert error_of(raw(sock, request("GET", target)))[:2] == (400, "invalid_request")
    assert daemon_pid(home) == pid


def test_internal_errors_are_json_500(tmp_path: Path) -> None:
    """The middleware's last resort, with a route whose handler fails (no way to make a
    real handler fail on purpose without breaking the store)."""
    from aiohttp import web

    from bgtransfer._daemon._server import Daemon

    home = bgtransfer.resolve_home(tmp_path / "h")
    sock = tmp_path / "t.sock"

    async def go() -> bytes:
        daemon = Daemon(home)
        app = daemon.app()

        async def boom(request: web.Request) -> web.Response:
            raise ZeroDivisionError("division by zero")

        app.router.add_get("/v1/boom", boom)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        await web.UnixSite(runner, str(sock)).start()
        try:
            return await asyncio.to_thread(raw, sock, request("GET", "/v1/boom"))
        finally:
            await runner.cleanup()
            daemon.store.close()

    status, _headers, body = answer(asyncio.run(go()))
    assert status == 500
    assert body["error"]["code"] == "internal_error"
    assert "ZeroDivisionError" in body["error"]["message"]


def test_client_maps_413_to_invalid_request(home: Path, tmp_path: Path) -> None:
    with bgtransfer.Session("big", home=home) as s:
        huge = {"X-Pad": "a" * (2 << 20)}
        with pytest.raises(bgtransfer.InvalidRequest, match="request too large"):
            s.download("http://127.0.0.1:9/x", tmp_path / "x", headers=huge)
        assert s.tasks() == []


def test_a_request_that_trickles_its_headers_is_cut_off(home: Path) -> None:
    env = env_with(BGTRANSFER_HEADER_TIMEOUT="2")
    r = subprocess.run(
        [sys.executable, "-m", "bgtransfer", "--home", str(home), "daemon", "start"],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(str(home / "control.sock"))
        c.settimeout(0.5)
        c.sendall(b"GET /v1/status HTTP/1.1\r\n")
        t0 = time.monotonic()
        closed = False
        for _i in range(60):  # one header byte every half second, at most 30 s
            try:
                c.sendall(b"X")
                if c.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        took = time.monotonic() - t0
    assert closed, "the daemon kept a connection that never finished its headers"
    assert took < 20, took
    assert json.loads(run_cli(home, "daemon", "status", "--json").stdout)["running"] is True


def test_a_subscriber_that_stops_reading_is_dropped_and_a_slow_one_catches_up(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    env = env_with(BGTRANSFER_EVENT_QUEUE="200")
    r = subprocess.run(
        [sys.executable, "-m", "bgtransfer", "--home", str(home), "daemon", "start"],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    n, chunk = 1000, 50  # batches smaller than the queue: a reader that keeps up keeps up
    stuck = socket.socket(socket.AF_UNIX)
    stuck.connect(str(home / "control.sock"))
    stuck.sendall(request("GET", "/v1/events?session=flood&since=0"))

    async def run() -> tuple[set[str], dict[str, int]]:
        seen: dict[str, int] = {}
        async with bgtransfer.AsyncSession("flood", home=home) as s:
            events = s.events(since=0)
            first = await s.download(server.url(f"/gen/10?key={key}-0"), tmp_path / "f0")
            ev = await anext(events)  # connected
            ids = {first.id}
            for start in range(1, n, chunk):
                batch = await s.download_many(
                    {"url": server.url(f"/gen/10?key={key}-{i}"), "path": tmp_path / f"f{i}"}
                    for i in range(start, min(n, start + chunk))
                )
                ids.update(t.id for t in batch)
            await asyncio.sleep(4)  # fall behind while the tasks run
            async with asyncio.timeout(100):
                while True:
                    if ev.state is bgtransfer.TaskState.COMPLETED and ev.kind == "state":
                        seen[ev.task_id] = seen.get(ev.task_id, 0) + 1
                        if ids <= set(seen):
                            return ids, seen
                    ev = await anext(events)

    ids, seen = asyncio.run(run())
    assert set(seen) == ids
    assert set(seen.values()) == {1}, "a completion was delivered twice or never"
    # The subscriber that never read was dropped: what was sent ends with the end of stream.
    stuck.settimeout(20)
    tail = b""
    while True:
        b = stuck.recv(1 << 16)
        if not b:
            break
        tail = (tail + b)[-16:]
    stuck.close()
    assert tail.endswith(b"0\r\n\r\n")  # the chunked stream was ended by the daemon
    log = (home / "daemon.log").read_text()
    assert "dropped a subscriber of 'flood' that fell behind" in log
