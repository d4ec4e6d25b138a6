"""The partial file and its placement: every step of the durability order lives here.

Order for a checkpoint: write -> fdatasync(partial) -> its record -> commit offset. The
fdatasync and the record are the group commit's writer thread's (:class:`SyncJob`, made by
``PartialFile.sync_later`` on the loop): the loop goes on receiving and writing while the
disk catches up, and the offset still commits only after the bytes it names are durable.
Order at the end: seal (identity, length, sha256 of the bytes on disk, final mode) ->
fsync(partial) -> link/rename to the target -> fsync(directory)
-> commit COMPLETED (the directory fsync is the engine's group commit's, shared by every
file that finished meanwhile). The target name never holds a partial file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
from typing import Protocol

from bgtransfer._engine._sidecar_io import RecordKeeper
from bgtransfer._engine._syncjob import SyncJob
from bgtransfer._exceptions import DestinationError, IntegrityError, InvalidRequest

__all__ = [
    "PartialFile",
    "PartialLost",
    "SyncJob",
    "check_target",
    "current_umask",
    "file_mode",
    "fsync_dir",
    "fsync_file",
    "partial_path",
    "size_of",
]

log = logging.getLogger("bgtransfer")

_READ = 1 << 20


def partial_path(target: str, task_id: str) -> str:
    head, name = os.path.split(target)
    return os.path.join(head, f".{name}.{task_id[:12]}.bgtransfer-part")


def check_target(path: object, *, overwrite: bool) -> str:
    """Absolute target path, or InvalidRequest naming what is wrong with it.

    The directory is resolved once, here (symlinks in any of its components followed, like
    ``realpath``): the task records the real directory, and every later open refuses a
    directory that is no longer that one (see :class:`PartialFile`).
    """
    if not isinstance(path, str | os.PathLike):
        raise InvalidRequest(f"target path must be a string or path, not {path!r}")
    raw = os.fspath(path)
    if not isinstance(raw, str) or not raw or "\0" in raw:
        raise InvalidRequest(f"target path is empty or contains NUL: {raw!r}")
    target = os.path.abspath(raw)
    if raw.endswith(os.sep) or os.path.isdir(target):
        raise InvalidRequest(f"target is a directory, not a file path: {raw!r}")
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise InvalidRequest(f"the target's directory does not exist: {parent!r}")
    target = os.path.join(os.path.realpath(parent), os.path.basename(target))
    if os.path.lexists(target):
        if not overwrite:
            raise InvalidRequest(f"target already exists (pass overwrite=True to replace): {raw!r}")
        if not stat.S_ISREG(os.lstat(target).st_mode):
            raise InvalidRequest(f"target exists and is not a regular file: {raw!r}")
    return target


def current_umask() -> int:
    """This process's umask, read without changing it (os.umask() sets it for a moment, for
    every thread: a file another thread creates then would get the wrong mode)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & 0o777
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode(umask: int | None) -> int:
    """What curl and wget give a new file: 0666 less the umask."""
    return 0o666 & ~(current_umask() if umask is None else umask)


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


class PartialLost(DestinationError):
    """The partial file to resume is gone or is not this task's file: start over."""


class _Holder(Protocol):
    """Where the partial file's identity is kept: the task's snapshot.

    Written here, not through ``TransferMachine.handle()``: the identity is a fact the file
    system gives at the moment of a syscall (the directory opened, the file created, a name
    found to be someone else's), recorded in every phase (a cancel's removal, a finished
    task's cleanup, a seal hashed on a worker thread) and never decided on by the machine,
    which only carries it to the store. An event for it would be allowed in every phase and
    do nothing but this assignment.
    """

    partial_id: tuple[int, ...]


class PartialFile:
    """The hidden file a download writes to, known by identity, not only by name.

    The task's snapshot records the directory's (device, inode) and, once the file is
    created, the file's (device, inode, owner). Every later open goes through a descriptor
    of the directory, opened without following a symlink and checked against the record
    (a directory swapped for a symlink or for another directory is refused, never written
    into), and checks the file with fstat on the very descriptor it then uses: a file that
    is not the one this task created (another file, a hard link, a symlink, a file of
    another user) is never adopted. Its name is unlinked (the file it names is not
    touched) and the download starts over.
    """

    def __init__(self, path: str, holder: _Holder) -> None:
        self.path = path
        self.dir, self.name = os.path.split(path)
        self._holder = holder
        self.fd = -1
        self.dirty = False
        self.new_entry = False
        # Sequential writes (open()): where the next byte goes, the end of the bytes the
        # last checkpoint synced, and below what the page cache was let go of; -1: not
        # sequential (segments write anywhere), nothing is let go of.
        self._end = -1
        self._synced_end = 0
        self._dropped = 0
        # A checkpoint's fdatasync failed in the writer thread (SyncJob): set there.
        self.sync_error: DestinationError | None = None
        # What a new store needs to adopt this file (xattr or sidecar): _sidecar_io.
        self.record = RecordKeeper(path)

    @property
    def ident(self) -> tuple[int, ...]:
        return self._holder.partial_id

    @ident.setter
    def ident(self, value: tuple[int, ...]) -> None:
        self._holder.partial_id = value

    # -- the directory and the name --------------------------------------------------------

    def open_dir(self) -> int:
        """A descriptor of the task's directory; DestinationError if it is not that one."""
        try:
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise DestinationError(
                f"cannot open the directory {self.dir} (a symlink is not followed): {exc.strerror}"
            ) from None
        st = os.fstat(dfd)
        known = self.ident[:2]
        if not known:
            self.ident = (st.st_dev, st.st_ino)
        elif (st.st_dev, st.st_ino) != known:
            os.close(dfd)
            raise DestinationError(
                f"the directory {self.dir} was replaced since the download began; "
                "not writing into another directory"
            )
        return dfd

    def _mine(self, st: os.stat_result) -> bool:
        return (
            len(self.ident) == 5
            and stat.S_ISREG(st.st_mode)
            and (st.st_dev, st.st_ino, st.st_uid) == self.ident[2:]
            and st.st_nlink == 1
        )

    def _forget(self) -> None:
        self.ident = self.ident[:2]

    def _discard(self, dfd: int, what: str) -> None:
        log.warning("partial file %s is %s: not adopted, its name removed", self.path, what)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.name, dir_fd=dfd)
        self._forget()

    def _reopen(self, dfd: int, flags: int) -> int:
        """This task's file opened with ``flags``, or -1: no file under the name, or one
        that is not ours (discarded)."""
        try:
            st = os.stat(self.name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            self._forget()
            return -1
        if len(self.ident) != 5:
            # Created but never recorded (a crash before the first commit), or planted.
            self._discard(dfd, "not on record")
            return -1
        if not self._mine(st):  # no open at all: a FIFO or device must not be opened
            self._discard(dfd, "another file")
            return -1
        try:
            fd = os.open(self.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            self._forget()
            return -1
        except OSError:  # swapped for a symlink since the stat
            self._discard(dfd, "another file")
            return -1
        if not self._mine(os.fstat(fd)):  # the descriptor we use is the one that counts
            os.close(fd)
            self._discard(dfd, "another file")
            return -1
        return fd

    def _create(self, dfd: int) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(2):
            try:
                fd = os.open(self.name, flags, 0o600, dir_fd=dfd)
                break
            except FileExistsError:
                self._discard(dfd, "not on record")
            except OSError as exc:
                raise DestinationError(
                    f"cannot create partial file {self.path}: {exc.strerror}"
                ) from None
        else:
            raise DestinationError(f"cannot create partial file {self.path}: the name is taken")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            raise DestinationError(f"partial file {self.path} is not a private regular file")
        self.ident = (*self.ident[:2], st.st_dev, st.st_ino, st.st_uid)
        self.record.forget_stale(dfd)
        # The new name becomes durable with the first checkpoint (sync()) or with the final
        # placement's directory fsync: a small file then costs one directory fsync, not two.
        self.new_entry = True
        return fd

    def _open_fd(self, *, resume: bool) -> int:
        """Our file for writing; created when there is none, unless ``resume`` needs the
        bytes already in it (PartialLost then)."""
        dfd = self.open_dir()
        try:
            fd = self._reopen(dfd, os.O_WRONLY)
            if fd >= 0:
                return fd
            if resume:
                raise PartialLost(
                    f"the partial file {self.path} is gone or was replaced: starting over"
                )
            return self._create(dfd)
        finally:
            os.close(dfd)

    def size(self) -> int | None:
        """Bytes in this task's file; None when there is none (anything else found under
        its name is discarded). DestinationError when the directory is not the task's."""
        dfd = self.open_dir()
        try:
            fd = self._reopen(dfd, os.O_RDONLY)
        finally:
            os.close(dfd)
        if fd < 0:
            return None
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def open_read(self) -> int:
        """This task's file for reading, or -1 (a fleet takeover copies its prefix)."""
        dfd = self.open_dir()
        try:
            return self._reopen(dfd, os.O_RDONLY)
        finally:
            os.close(dfd)

    # -- writing ---------------------------------------------------------------------------

    def open(self, start: int) -> None:
        """Open for writing at ``start``, dropping anything after it (never-committed bytes)."""
        fd = self._open_fd(resume=start > 0)
        try:
            self._cutting(fd, start)
            os.ftruncate(fd, start)
            os.lseek(fd, start, os.SEEK_SET)
        except (OSError, DestinationError):
            os.close(fd)
            raise
        self.fd = fd
        self._end = self._synced_end = self._dropped = start
        if start == 0:  # every byte a failed sync may have lost is written again
            self.sync_error = None

    def open_sized(self, total: int, *, fresh: bool) -> None:
        """Open for positional writes (segments) with the file exactly ``total`` bytes long.

        ``fresh`` drops every old byte first (a new version must not show through the
        holes); otherwise the bytes before each segment's committed position are kept and
        anything after it is simply written over.
        """
        fd = self._open_fd(resume=not fresh)
        try:
            if fresh:
                self._cutting(fd, 0)
                os.ftruncate(fd, 0)
            if os.fstat(fd).st_size != total:
                os.ftruncate(fd, total)
        except (OSError, DestinationError):
            os.close(fd)
            raise
        self.fd = fd
        self._end = -1
        self.dirty = True  # the new length must be synced with the first checkpoint
        if fresh:  # as in open(0)
            self.sync_error = None

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
        if self._end >= 0:
            self._end += len(data)

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
        self._end = -1

    def sync(self) -> None:
        if self.fd >= 0 and self.dirty:
            os.fdatasync(self.fd)
            self.dirty = False
            # After the fdatasync, never before: the record vouches for durable bytes only.
            if self.record.write(self.fd, self.open_dir):
                self.new_entry = True  # a new sidecar: its entry wants the directory fsync
            if self.new_entry:
                self.fsync_dir_entry()
                self.new_entry = False

    def sync_later(self, *, keep_cached: bool = False) -> SyncJob | None:
        """For a checkpoint: the sync the group commit runs in its thread just before it
        commits the offset (:class:`SyncJob`); None when nothing was written since.

        A sequential download also lets go of the page cache below the previous
        checkpoint, once synced (``POSIX_FADV_DONTNEED``): a 1 GiB download keeps ~64 MiB
        of cache instead of pushing 1 GiB of the user's cache out, and reuses the pages it
        freed instead of faulting in new ones. The last checkpoint's bytes stay (a
        digest's tail hasher reads them back); ``keep_cached``: nothing is let go of (the
        whole file is read back at the end, for ``sha256`` or caller checksums).

        ``dirty`` stays set: closing the file still syncs it on the spot. DestinationError
        when an earlier checkpoint's sync failed (nothing of this file may be committed
        until it is reopened, which cuts it back to the committed offset).
        """
        if self.fd < 0 or not self.dirty:
            return None
        if self.sync_error is not None:
            raise self.sync_error
        drop = None
        if self._end >= 0:
            # Synced by an earlier job of this file: the writer thread runs them in order.
            if self._synced_end > self._dropped and not keep_cached:
                drop = (self._dropped, self._synced_end)
                self._dropped = self._synced_end
            self._synced_end = self._end
        job = SyncJob(self, self.record.prepare(), new_entry=self.new_entry, drop=drop)
        self.new_entry = False  # the job fsyncs the directory before the commit
        return job

    def fsync_dir_entry(self) -> None:
        """Make the file's (or its sidecar's) new name durable: fsync the directory."""
        try:
            dfd = self.open_dir()
        except DestinationError as exc:
            # Swapped since the file was made: the next open or the placement refuses it;
            # the bytes are synced either way.
            log.warning("%s", exc.message)
            return
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def close(self, *, sync: bool = True) -> None:
        """Close, fsyncing first unless the caller syncs the file by other means."""
        if self.fd >= 0:
            try:
                if sync:
                    self.sync()
                    self._record_catch_up()
            finally:
                os.close(self.fd)
                self.fd = -1

    # -- the partial record (adopt) ---------------------------------------------------------

    def _record_catch_up(self) -> None:
        if self.record.catch_up(self.fd, self.open_dir):
            self.fsync_dir_entry()  # a new sidecar's entry, as in sync()

    def _cutting(self, fd: int, size: int) -> None:
        """Bytes past ``size`` are about to go (a restart, or bytes no checkpoint vouched
        for): the record goes first, durably, so a new representation's bytes never sit
        under the old one's record."""
        if os.fstat(fd).st_size > size:
            dfd = self.open_dir()
            try:
                self.record.clear(fd, dfd)
            finally:
                os.close(dfd)

    # -- the end -------------------------------------------------------------------------

    def seal(self, *, expected_length: int | None, sha256: str | None, mode: int) -> None:
        """Check the finished file before it is placed and give it its final mode.

        It must be this task's file and of the expected length; with ``sha256`` the digest
        that decides is of the bytes read back from the file (not of what was meant to be
        written): one more read of the file, from the page cache as a rule, in a thread.
        """
        if self.sync_error is not None:  # a checkpoint's sync lost pages: never placed
            raise self.sync_error
        dfd = self.open_dir()
        try:
            fd = self._reopen(dfd, os.O_RDONLY)
        finally:
            os.close(dfd)
        if fd < 0:
            raise DestinationError(
                f"partial file {self.path} vanished or was replaced before it could be placed"
            )
        try:
            size = os.fstat(fd).st_size
            if expected_length is not None and size != expected_length:
                raise IntegrityError(
                    f"length mismatch: got {size} bytes, expected {expected_length}"
                )
            if sha256 is not None:
                h = hashlib.sha256()
                while block := os.read(fd, _READ):
                    h.update(block)
                if h.hexdigest() != sha256:
                    raise IntegrityError(f"sha256 mismatch: got {h.hexdigest()}, expected {sha256}")
            # 0600 until now: nobody else could read a file that is not yet what it claims.
            self.record.strip(fd)  # before the mode: the record may hold a signed URL
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def place(self, target: str, *, overwrite: bool) -> None:
        """Give the sealed, synced file the target name (same directory), by descriptor.

        The caller fsyncs the directory before it records completion; many files finishing
        together share that one fsync.
        """
        name = os.path.basename(target)
        dfd = self.open_dir()
        try:
            try:
                st = os.stat(self.name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                raise DestinationError(f"partial file {self.path} vanished") from None
            if not self._mine(st):
                raise DestinationError(f"partial file {self.path} was replaced; not placed")
            if overwrite:
                os.rename(self.name, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            else:
                # link() fails if the target appeared meanwhile; rename() would clobber it.
                try:
                    os.link(self.name, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
                except FileExistsError:
                    # A crash between link and unlink left both names on our inode: finish.
                    other = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    if not os.path.samestat(st, other):
                        raise
                placed = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if (placed.st_dev, placed.st_ino) != (st.st_dev, st.st_ino):
                    # Swapped between the check and the link: take back the name we made.
                    os.unlink(name, dir_fd=dfd)
                    raise DestinationError(f"partial file {self.path} was replaced; not placed")
                os.unlink(self.name, dir_fd=dfd)
            self.record.remove_sidecar(dfd)
        except FileExistsError:
            raise DestinationError(
                f"target {target} appeared during the download; not overwritten"
            ) from None
        except OSError as exc:
            raise DestinationError(f"cannot place {target}: {exc}") from exc
        finally:
            os.close(dfd)

    def remove(self) -> None:
        """Remove this task's file (cancel, failure); anything else under its name stays."""
        try:
            dfd = self.open_dir()
        except DestinationError as exc:
            log.warning("not removing %s: %s", self.path, exc.message)
            return
        try:
            try:
                st = os.stat(self.name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                self.record.remove_sidecar(dfd)  # the record of a file that is gone
                return
            unknown = len(self.ident) != 5
            if (unknown and stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()) or (
                not unknown and (st.st_dev, st.st_ino) == self.ident[2:4]
            ):
                os.unlink(self.name, dir_fd=dfd)
                self.record.remove_sidecar(dfd)
                os.fsync(dfd)
            self._forget()
        finally:
            os.close(dfd)


def size_of(path: str) -> int | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None
