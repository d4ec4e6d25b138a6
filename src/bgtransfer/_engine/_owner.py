"""Which process runs a task: an flock held for the life of the owning process.

A lock that can be taken means its owner is gone (exited, crashed, SIGKILLed): the kernel
drops flocks with the process, so this cannot be fooled by a reused pid.
"""

from __future__ import annotations

import fcntl
import os
import uuid

from bgtransfer._trust import open_private, private_dir

__all__ = ["OwnerLock", "owner_alive"]


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
