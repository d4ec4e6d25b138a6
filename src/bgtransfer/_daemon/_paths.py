"""Where a home's daemon keeps its lock, socket, log and pid."""

from __future__ import annotations

import hashlib
import os

from bgtransfer._trust import private_dir

__all__ = ["MAX_BODY", "daemon_lock", "daemon_log", "socket_path"]

# The largest request body the control socket takes (413 beyond); here, not in the server,
# because the client checks it too and must not import aiohttp.
MAX_BODY = 1 << 20

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
    private_dir(base)
    digest = hashlib.sha256(os.fsencode(home)).hexdigest()[:24]
    return os.path.join(base, f"{digest}.sock")
