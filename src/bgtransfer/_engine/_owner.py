"""Which process runs a task: an flock held for the life of the owning process.

A lock that can be taken means its owner is gone (exited, crashed, SIGKILLed): the kernel
drops flocks with the process, so this cannot be fooled by a reused pid.
"""

from __future__ import annotations

import fcntl
import os
import uuid

from bgtransfer._exceptions import InvalidTransition
from bgtransfer._store._base import TaskRow
from bgtransfer._trust import open_private, private_dir

__all__ = ["OwnerLock", "check_control", "owner_alive"]


def _path(home: str, token: str) -> str:
    return os.path.join(home, "owners", f"{token}.lock")


class OwnerLock:
    def __init__(self, home: str) -> None:
        private_dir(os.path.join(home, "owners"))
        self.home = home
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._fd = open_private(_path(home, self.token), os.O_RDWR | os.O_CREAT)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        if self._fd >= 0:
            try:
                os.unlink(_path(self.home, self.token))
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = -1


def owner_alive(home: str, token: str) -> bool:
    path = _path(home, token)
    try:
        fd = open_private(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return False


def check_control(row: TaskRow, lock: OwnerLock, *, background: bool) -> None:
    """May this engine (background or not, holding ``lock``) suspend, resume or cancel the
    task? InvalidTransition says who may instead."""
    if row.background != background:
        raise InvalidTransition(
            f"task {row.id} belongs to a "
            + (
                "background session; control it through the daemon"
                if row.background
                else "foreground session; control it from a foreground Session"
            ),
            task_id=row.id,
        )
    if not background and row.owner not in (None, lock.token) and owner_alive(lock.home, row.owner):
        raise InvalidTransition(
            f"task {row.id} is being run by another process ({row.owner.split('-')[0]})",
            task_id=row.id,
        )
