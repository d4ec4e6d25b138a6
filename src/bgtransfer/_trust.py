"""What bgtransfer trusts: a home, the files in it and the socket of its daemon, that only this
user can change or serve (in the spirit of ssh's StrictModes).

A home another user can write to is refused, because its store names completion hooks that
the daemon runs as you: whoever can plant a store there can run code as you. Files in the home
are opened without following symlinks and must be regular files of this user with one link,
so a planted link cannot make the daemon truncate or append to another file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import struct

from bgtransfer._exceptions import UnsafeHome

__all__ = [
    "check_home",
    "check_peer",
    "check_private_file",
    "open_private",
    "prepare_home",
    "private_dir",
    "same_file",
]


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _refuse_mode(what: str, path: str, st: os.stat_result) -> None:
    me = os.geteuid()
    if st.st_uid != me:
        raise UnsafeHome(
            f"refusing the {what} {path}: it belongs to {_owner(st.st_uid)}, not to you "
            f"({_owner(me)}); a store or file planted there could run code as you"
        )
    if st.st_mode & 0o022:
        raise UnsafeHome(
            f"refusing the {what} {path}: it is group- or world-writable "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); fix it with: chmod go-w {path}"
        )


def check_home(path: str) -> os.stat_result:
    """The home's stat if only this user can change it; else :class:`UnsafeHome`."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UnsafeHome(f"cannot use the home {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeHome(f"cannot use the home {path}: it is not a directory")
    _refuse_mode("home", path, st)
    return st


def prepare_home(path: str) -> os.stat_result:
    """Create the home (0700, whatever the umask) unless it exists, then check it."""
    parent = os.path.dirname(path)
    try:
        if parent:
            os.makedirs(parent, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeHome(f"cannot create the home {path}: {exc.strerror}") from None
    else:
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask; 0700 is the rule
    return check_home(path)


def private_dir(path: str) -> None:
    """A directory only this user can enter (created 0700 if missing), never a symlink."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeHome(f"refusing {path}: not a directory (a symbolic link?)")
    _refuse_mode("directory", path, st)
    if st.st_mode & 0o077:
        raise UnsafeHome(
            f"refusing {path}: other users can enter it (mode {stat.S_IMODE(st.st_mode):04o})"
        )


def _check_stat(path: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeHome(f"refusing {path}: it is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeHome(f"refusing {path}: not a regular file")
    if st.st_uid != os.geteuid():
        raise UnsafeHome(f"refusing {path}: it belongs to {_owner(st.st_uid)}, not to you")
    if st.st_nlink > 1:
        raise UnsafeHome(f"refusing {path}: it has {st.st_nlink} hard links (another name)")


def open_private(path: str, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that never follows a symlink and only returns a regular file of this user
    with one link. O_NONBLOCK while opening: a FIFO planted there cannot hang the open."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeHome(f"refusing {path}: it is a symbolic link") from None
        if exc.errno == errno.ENXIO:
            raise UnsafeHome(f"refusing {path}: not a regular file") from None
        raise
    try:
        _check_stat(path, os.fstat(fd))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_private_file(path: str) -> None:
    """A file that others open by name (SQLite's store, -wal, -shm): absent, or regular, ours,
    one link and not a symlink."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    _check_stat(path, st)


def same_file(path: str, st: os.stat_result) -> bool:
    """Whether ``path`` (not followed) is still the file ``st`` describes."""
    try:
        now = os.lstat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def check_peer(sock: socket.socket, path: str) -> int:
    """The pid serving ``sock``, checked to run as this user before a byte is sent to it."""
    me = os.geteuid()
    if hasattr(socket, "SO_PEERCRED"):
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", raw)
    else:  # pragma: no cover - no peer credentials here: the socket file's owner must do
        pid, uid = 0, os.stat(path).st_uid
    if uid != me:
        raise UnsafeHome(
            f"refusing to talk to {path}: it is served by {_owner(uid)} (pid {pid}), not by "
            f"you ({_owner(me)}); nothing was sent"
        )
    return int(pid)
