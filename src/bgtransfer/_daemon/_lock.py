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


TRACED_LOOKS = 10  # looks at a process in tracing stop, TRACED_INTERVAL apart
TRACED_INTERVAL = 0.05


def _state(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return b""


def process_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP, Ctrl-Z, a debugger): it cannot answer.

    "T" (stopped by a signal) lasts until SIGCONT: one look says so. "t" (tracing stop) is
    a debugger holding the process, or only a moment at a system call of a process under
    strace: that one counts as stopped only if it stays so through looks over ~0.5 s.
    """
    state = _state(pid)
    if state != b"t":
        return state == b"T"
    # A traced process that runs between its stops switches context; one a debugger holds
    # does not. Counting switches keeps a starved strace (a loaded machine, where the stop
    # at each system call lasts long) from looking like a held process.
    switches = _switches(pid)
    for _ in range(TRACED_LOOKS - 1):
        time.sleep(TRACED_INTERVAL)
        if _state(pid) not in (b"t", b"T") or _switches(pid) != switches:
            return False
    return True


def _switches(pid: int) -> int | None:
    """Voluntary plus involuntary context switches of ``pid`` so far (None: gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            return sum(int(line.split()[1]) for line in f if b"ctxt_switches:" in line)
    except (OSError, ValueError, IndexError):
        return None


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
