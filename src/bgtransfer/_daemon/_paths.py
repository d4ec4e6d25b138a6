"""Where a home's daemon keeps its lock, socket, log and pid."""

from __future__ import annotations

import hashlib
import os
import stat

from bgtransfer._exceptions import TransferError

__all__ = ["daemon_lock", "daemon_log", "socket_path"]

# sun_path holds 108 bytes on Linux; leave room for the terminating NUL.
_MAX_SOCKET_PATH = 100


def daemon_lock(home: str) -> str:
    return os.path.join(home, "daemon.lock")


def daemon_log(home: str) -> str:
    return os.path.join(home, "daemon.log")


def socket_path(home: str) -> str:
    """The control socket: in the home, or (for long homes) a private dir in /tmp.

    The fallback dir is named by the user and a hash of the home, created 0700 and refused
    if anyone else owns it or can enter it (never a predictable world-writable name).
    """
    inside = os.path.join(home, "control.sock")
    if len(os.fsencode(inside)) <= _MAX_SOCKET_PATH:
        return inside
    base = os.path.join("/tmp", f"bgtransfer-{os.geteuid()}")
    os.makedirs(base, mode=0o700, exist_ok=True)
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise TransferError(f"refusing to use {base}: not a private directory of this user")
    digest = hashlib.sha256(os.fsencode(home)).hexdigest()[:24]
    return os.path.join(base, f"{digest}.sock")
