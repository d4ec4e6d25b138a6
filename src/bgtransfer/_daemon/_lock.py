"""The daemon's lock (one daemon per home) and what a client can learn from it.

The lock file holds the daemon's pid and nothing else (scripts read it). Whether the daemon
was stopped on request is in a second file, ``daemon.stopped`` (its pid), written when a
graceful stop begins: a client that was following that daemon then ends instead of starting
another one, while a daemon that crashed is started again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

from bgtransfer._daemon._paths import daemon_lock
from bgtransfer._trust import open_private

__all__ = [
    "clear_stopped",
    "lock_holder",
    "mark_stopped",
    "process_stopped",
    "stopped_pid",
    "take_lock",
]


def _stopped_path(home: str) -> str:
    return os.path.join(home, "daemon.stopped")


def take_lock(home: str) -> int | None:
    """The lock's descriptor with our pid written in it, or None if a daemon holds it."""
    fd = open_private(daemon_lock(home), os.O_RDWR | os.O_CREAT)
    # A client probing the lock (lock_holder) holds it for microseconds: try a few times
    # before concluding that another daemon has it.
    for attempt in range(10):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt == 9:
                os.close(fd)
                return None
            time.sleep(0.02)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def lock_holder(home: str) -> int | None:
    """None when no daemon holds the home's lock; else its pid (0 if the file has none yet)."""
    try:
        fd = open_private(daemon_lock(home), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        return None
    finally:
        os.close(fd)


STOP_SAMPLES = 5  # looks at the process's state, STOP_INTERVAL apart, before "stopped"
STOP_INTERVAL = 0.02


def _stopped_now(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in (b"T", b"t")


def process_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP, Ctrl-Z, a debugger): it cannot answer.

    A process under strace is in tracing stop ("t") for a moment at each system call, so
    one look can catch a daemon that runs: it counts as stopped only if every one of a few
    looks over ~0.1 s finds it so (a stopped process stays stopped).
    """
    for n in range(STOP_SAMPLES):
        if not _stopped_now(pid):
            return False
        if n < STOP_SAMPLES - 1:
            time.sleep(STOP_INTERVAL)
    return True


def mark_stopped(home: str) -> None:
    """Record that this daemon was asked to stop (best effort: the home may be gone)."""
    with contextlib.suppress(OSError):
        fd = open_private(_stopped_path(home), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)


def clear_stopped(home: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_stopped_path(home))


def stopped_pid(home: str) -> int | None:
    """The pid of the daemon last stopped on request, if the home records one."""
    try:
        fd = open_private(_stopped_path(home), os.O_RDONLY)
    except OSError:
        return None
    try:
        text = os.read(fd, 32).decode(errors="replace").strip()
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else None
