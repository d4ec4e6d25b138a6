"""The partial file and its placement: every step of the durability order lives here.

Order for a checkpoint: write -> fsync(partial) -> commit offset.
Order at the end: verify -> fsync(partial) -> link/rename to the target -> fsync(directory)
-> commit COMPLETED (the directory fsync is the engine's group commit's, shared by every
file that finished meanwhile). The target name never holds a partial file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

from bgtransfer._exceptions import DestinationError, IntegrityError, InvalidRequest

__all__ = [
    "PartialFile",
    "check_target",
    "fsync_dir",
    "fsync_file",
    "hash_prefix",
    "link_into_place",
    "partial_path",
    "remove_partial",
    "verify",
]

_READ = 1 << 20


def partial_path(target: str, task_id: str) -> str:
    head, name = os.path.split(target)
    return os.path.join(head, f".{name}.{task_id[:12]}.bgtransfer-part")


def check_target(path: object, *, overwrite: bool) -> str:
    """Absolute target path, or InvalidRequest naming what is wrong with it."""
    if not isinstance(path, str | os.PathLike):
        raise InvalidRequest(f"target path must be a string or path, not {path!r}")
    raw = os.fspath(path)
    if not isinstance(raw, str) or not raw or "\0" in raw:
        raise InvalidRequest(f"target path is empty or contains NUL: {raw!r}")
    target = os.path.abspath(raw)
    parent = os.path.dirname(target)
    if raw.endswith(os.sep) or os.path.isdir(target):
        raise InvalidRequest(f"target is a directory, not a file path: {raw!r}")
    if not os.path.isdir(parent):
        raise InvalidRequest(f"the target's directory does not exist: {parent!r}")
    if os.path.lexists(target):
        if not overwrite:
            raise InvalidRequest(f"target already exists (pass overwrite=True to replace): {raw!r}")
        if not stat.S_ISREG(os.lstat(target).st_mode):
            raise InvalidRequest(f"target exists and is not a regular file: {raw!r}")
    return target


def fsync_dir(directory: str) -> None:
    _fsync(directory, os.O_DIRECTORY)


def fsync_file(path: str) -> None:
    """fsync a file by name (it was written and closed elsewhere), never through a link."""
    _fsync(path, os.O_NOFOLLOW)


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_prefix(path: str, length: int) -> hashlib._Hash:
    """sha256 of the first ``length`` bytes already on disk (resume in a new process)."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        left = length
        while left > 0:
            block = os.read(fd, min(_READ, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    finally:
        os.close(fd)
    return h


class PartialFile:
    """The hidden file a download writes to, opened without following symlinks."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.dirty = False
        self.new_entry = False

    def open(self, start: int) -> None:
        """Open for writing at ``start``, dropping anything after it (never-committed bytes)."""
        fd = self._open_fd()
        try:
            os.ftruncate(fd, start)
            os.lseek(fd, start, os.SEEK_SET)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd

    def open_sized(self, total: int, *, fresh: bool) -> None:
        """Open for positional writes (segments) with the file exactly ``total`` bytes long.

        ``fresh`` drops every old byte first (a new version must not show through the
        holes); otherwise the bytes before each segment's committed position are kept and
        anything after it is simply written over.
        """
        fd = self._open_fd()
        try:
            if fresh:
                os.ftruncate(fd, 0)
            if os.fstat(fd).st_size != total:
                os.ftruncate(fd, total)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        self.dirty = True  # the new length must be synced with the first checkpoint

    def _open_fd(self) -> int:
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            try:
                fd = os.open(self.path, flags)
            except OSError as exc:
                raise DestinationError(
                    f"unsafe or unusable partial file {self.path}: {exc}"
                ) from exc
            created = False
        except OSError as exc:
            raise DestinationError(f"cannot create partial file {self.path}: {exc}") from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (not created and st.st_nlink != 1):
            os.close(fd)
            raise DestinationError(f"partial file {self.path} is not a private regular file")
        # The new name becomes durable with the first checkpoint (sync()) or with the final
        # placement's directory fsync: a small file then costs one directory fsync, not two.
        self.new_entry = self.new_entry or created
        return fd

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise DestinationError(f"cannot write {self.path}: {exc.strerror}") from exc
                raise DestinationError(f"cannot write {self.path}: {exc}") from exc
            view = view[n:]
        self.dirty = True

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (segments share one descriptor)."""
        view = memoryview(data)
        while view:
            try:
                n = os.pwrite(self.fd, view, offset)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise DestinationError(f"cannot write {self.path}: {exc.strerror}") from exc
                raise DestinationError(f"cannot write {self.path}: {exc}") from exc
            view = view[n:]
            offset += n
        self.dirty = True

    def sync(self) -> None:
        if self.fd >= 0 and self.dirty:
            os.fdatasync(self.fd)
            self.dirty = False
            if self.new_entry:
                fsync_dir(os.path.dirname(self.path))
                self.new_entry = False

    def close(self, *, sync: bool = True) -> None:
        """Close, fsyncing first unless the caller syncs the file by other means."""
        if self.fd >= 0:
            try:
                if sync:
                    self.sync()
            finally:
                os.close(self.fd)
                self.fd = -1


def size_of(path: str) -> int | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def verify(
    partial: str,
    *,
    expected_length: int | None,
    sha256: str | None,
    digest: str | None,
) -> None:
    """Check the finished partial file's length (and sha256) before it is placed."""
    size = size_of(partial)
    if size is None:
        raise DestinationError(f"partial file {partial} vanished before it could be placed")
    if expected_length is not None and size != expected_length:
        raise IntegrityError(f"length mismatch: got {size} bytes, expected {expected_length}")
    if sha256 is not None:
        actual = digest if digest is not None else hash_prefix(partial, size).hexdigest()
        if actual != sha256:
            raise IntegrityError(f"sha256 mismatch: got {actual}, expected {sha256}")


def link_into_place(partial: str, target: str, *, overwrite: bool) -> None:
    """Give the verified, synced partial file the target name (the fast half).

    The caller fsyncs the directory before it records completion; many files finishing
    together share that one fsync.
    """
    try:
        if overwrite:
            os.replace(partial, target)
        else:
            # link() fails if the target appeared meanwhile; rename() would clobber it.
            try:
                os.link(partial, target, follow_symlinks=False)
            except FileExistsError:
                # A crash between link and unlink left both names on our inode: finish.
                if not os.path.samestat(os.lstat(partial), os.lstat(target)):
                    raise
            os.unlink(partial)
    except FileExistsError:
        raise DestinationError(
            f"target {target} appeared during the download; not overwritten"
        ) from None
    except OSError as exc:
        raise DestinationError(f"cannot place {target}: {exc}") from exc


def remove_partial(partial: str) -> None:
    try:
        os.unlink(partial)
    except FileNotFoundError:
        return
    fsync_dir(os.path.dirname(partial))
