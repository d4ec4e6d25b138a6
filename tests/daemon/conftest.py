from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def daemon_pid(home: Path) -> int | None:
    try:
        text = (home / "daemon.lock").read_text().strip()
    except FileNotFoundError:
        return None
    if not text:
        return None
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    # A zombie or a reused pid is not our daemon: check it still holds the lock.
    import fcntl

    fd = os.open(home / "daemon.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return pid
    finally:
        os.close(fd)
    return None


def kill_daemon(home: Path, sig: int = signal.SIGKILL) -> int | None:
    pid = daemon_pid(home)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while daemon_pid(home) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
    return pid


def daemons_under(root: Path) -> dict[int, str]:
    """The running ``bgtransfer --home H daemon run`` processes whose home H lies in
    ``root``, by pid (any user's: /proc/PID/cmdline is readable by all)."""
    top = os.path.abspath(root)
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:  # gone meanwhile
            continue
        if args[-2:] != ["daemon", "run"] or "--home" not in args[:-1]:
            continue  # a zombie has no cmdline: it is not running
        home = os.path.abspath(args[args.index("--home") + 1])
        if home == top or home.startswith(top + os.sep):
            found[int(entry.name)] = home
    return found


def kill_every_daemon(home: Path, timeout: float = 10.0) -> list[int]:
    """SIGKILL every daemon process of ``home``, not only the lock's holder: clients that
    raced to start the daemon each spawned one, and one still starting when the holder is
    killed would take the lock and serve for ever. Returns the pids killed."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p, h in daemons_under(home).items() if h == os.path.abspath(home)]
        if not pids or time.monotonic() > deadline:
            return killed
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if pid not in killed:  # seen again: not dead yet, a moment later
                killed.append(pid)
        time.sleep(0.02)


LEFT_GRACE = 10.0  # seconds a daemon may take to finish exiting after its test


@pytest.fixture(autouse=True)
def no_daemon_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fails a test that leaves a daemon of one of its homes running (then kills it), so
    that no test leaks processes into the next ones or past the session."""
    root = tmp_path_factory.getbasetemp()
    before = set(daemons_under(root))
    yield
    deadline = time.monotonic() + LEFT_GRACE
    while True:
        left = {p: h for p, h in daemons_under(root).items() if p not in before}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        pytest.fail(f"the test left daemons running (killed now): {left}", pytrace=False)


def daemon_connections(home: Path) -> int:
    """Connections open at (or being accepted by) the daemon's control socket: the lines of
    /proc/net/unix with its path, but for the listening socket itself."""
    from bgtransfer._daemon._paths import socket_path

    path = socket_path(str(home))
    with open("/proc/net/unix", encoding="utf-8", errors="replace") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for r in rows if len(r) >= 8 and r[7] == path and r[3] != LISTENING)


LISTENING = "00010000"  # __SO_ACCEPTCON in /proc/net/unix's Flags column


def run_cli(home: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-m", "bgtransfer", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    yield h
    kill_daemon(h)
    kill_every_daemon(h)
