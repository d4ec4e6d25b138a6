"""A running daemon checks, once a second, that its home is still the one it started in.

If the home was deleted or replaced, or its lock file or socket is no longer the daemon's
own, the daemon stops (logging why): a daemon no client can reach, or one beside which a
second daemon could start on the same name, would do harm by going on.
"""

from __future__ import annotations

import os
import stat

from bgtransfer._exceptions import UnsafeHome
from bgtransfer._trust import check_home, same_file

__all__ = ["WATCH_INTERVAL", "HomeWatch"]

WATCH_INTERVAL = 1.0


class HomeWatch:
    def __init__(self, home: str, lock_fd: int, lock_path: str) -> None:
        self.home = home
        self.home_st = check_home(home)
        self.lock_path = lock_path
        self.lock_st = os.fstat(lock_fd)
        self.socket_path: str | None = None
        self.socket_st: os.stat_result | None = None

    def bound(self, socket_path: str) -> None:
        """Remember the socket the daemon just bound (its inode is the daemon's mark)."""
        st = os.lstat(socket_path)
        if not stat.S_ISSOCK(st.st_mode):  # pragma: no cover - bind made it a moment ago
            raise UnsafeHome(f"{socket_path} is not the socket the daemon bound")
        self.socket_path, self.socket_st = socket_path, st

    def owns_socket(self) -> bool:
        """Whether the socket path still is the daemon's own (unlink it only then)."""
        return self.socket_st is not None and same_file(str(self.socket_path), self.socket_st)

    def problem(self) -> str | None:
        """Why the daemon must stop, or None while its home is the one it started in."""
        try:
            st = os.stat(self.home)
        except FileNotFoundError:
            return f"the home {self.home} was deleted"
        except OSError as exc:
            return f"the home {self.home} cannot be read: {exc.strerror}"
        if (st.st_dev, st.st_ino) != (self.home_st.st_dev, self.home_st.st_ino):
            return f"the home {self.home} was replaced by another directory"
        try:
            check_home(self.home)
        except UnsafeHome as exc:
            return exc.message
        if not same_file(self.lock_path, self.lock_st):
            return f"the lock file {self.lock_path} was removed or replaced"
        if self.socket_st is not None and not self.owns_socket():
            return f"the control socket {self.socket_path} was removed or replaced"
        return None
