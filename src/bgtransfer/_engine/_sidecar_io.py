"""The partial record on disk: written beside a download's partial file, read to adopt it.

What a record says is :mod:`bgtransfer._protocol._sidecar` (pure); this module does the I/O:

* **Where.** An extended attribute of the partial (``user.bgtransfer.partial``) when the
  filesystem has them and the record fits; else a small file beside it
  (``<partial>.bgtransfer.json``, mode 0600, replaced atomically: a temporary file,
  fdatasync, rename). ``BGTRANSFER_PARTIAL_RECORD`` in the engine's environment chooses:
  ``auto`` (the default), ``sidecar`` (always the file: for copies made without ``-X`` /
  ``--preserve=xattr``, which drop attributes) or ``off`` (no record at all).
* **When.** Only right after an fdatasync of the partial, with the machine's state of a
  moment before it: every byte the record vouches for is already durable. A checkpoint
  describes the state on the loop (:meth:`RecordKeeper.prepare`, the bytes it names are
  written, not yet synced) and the group commit's writer thread writes that record right
  after its fdatasync of the file and before it commits the offset
  (``PartialFile.sync_later``); closing the file syncs and records on the spot
  (``PartialFile.sync``). A crash can leave the record behind the data (safe: less is
  resumed), never ahead. Before a file is truncated for a new representation the record is
  removed and that is made durable, so new bytes never sit under an old record's validator.
* **Two threads.** A record prepared before the file was cut, stripped or removed (a
  *generation* ago), or older than one already written, is dropped, never written: the
  writer thread may run late, and a late record must not land on a new representation's
  bytes, on a finished file, or beside a partial that is gone.
* **What is not recorded.** Request headers (credentials live there). The URL is recorded
  as given, signed or not: it is what a resume needs. The record has the partial's own
  privacy (an attribute of a 0600 file, or a 0600 file); it is removed before the finished
  file gets its final mode, so a world-readable download never carries a signed URL.

Errors writing a record are logged once per file and never fail a download: the record is
for adopting a partial elsewhere, the store stays the engine's truth.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from bgtransfer._exceptions import (
    DestinationError,
    InvalidRequest,
    NoPartialRecord,
    PartialInUse,
    PartialRecordCorrupt,
    PartialRecordMismatch,
)
from bgtransfer._models import Phase
from bgtransfer._protocol._digest import Checksum
from bgtransfer._protocol._segments import MAX_SEGMENTS
from bgtransfer._protocol._sidecar import (
    MAX_RECORD,
    XATTR_NAME,
    PartialRecord,
    clip_to_file,
    contiguous,
    decode,
    encode,
    fits_xattr,
    sidecar_path,
)
from bgtransfer._protocol._task import Snapshot, Spec
from bgtransfer._store._base import Store, TaskRow

__all__ = [
    "ENV",
    "Found",
    "Prepared",
    "RecordKeeper",
    "adopt_into",
    "adopted_segments",
    "default_target",
    "read_record",
    "record_mode",
    "record_of",
    "refuse_in_use",
]

log = logging.getLogger("bgtransfer")

ENV = "BGTRANSFER_PARTIAL_RECORD"
_MODES = ("auto", "sidecar", "off")
# The filesystem has no user attributes, or not for this file: use the sidecar.
_NO_XATTR = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES}
# Too big for this filesystem's attribute space (ext4: one block for all of them).
_TOO_BIG = {errno.E2BIG, errno.ENOSPC, errno.ERANGE}
_ABSENT = {errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP}
# A sidecar replacement costs an fdatasync (~1-2 ms here, README): at most one a second per
# file, and one more when the file is closed. A record that lags is safe; one ahead is not.
SIDECAR_EVERY = 1.0


def record_mode() -> str:
    """The engine's choice (``BGTRANSFER_PARTIAL_RECORD``); an unknown value is ``auto``."""
    mode = os.environ.get(ENV, "auto").strip().lower()
    return mode if mode in _MODES else "auto"


def record_of(spec: Spec, snap: Snapshot, path: str, partial: str) -> PartialRecord | None:
    """What a download's record says now (None for an upload, or when nothing is known yet
    that a resume could use)."""
    if spec.kind != "download":
        return None
    offset = contiguous(snap.segments) if snap.segments else snap.offset
    checksums: tuple[Checksum, ...] = ()
    if spec.sha256 is not None:
        checksums = (Checksum("sha256", bytes.fromhex(spec.sha256)),)
    return PartialRecord(
        url=spec.url,
        offset=offset,
        length=snap.total,
        etag=snap.etag,
        last_modified=snap.last_modified,
        segments=snap.segments,
        checksums=checksums,
        mirrors=spec.urls[1:],
        path=path,
        partial=os.path.basename(partial),
    )


@contextlib.contextmanager
def _dir(open_dir: Callable[[], int]) -> Iterator[int]:
    dfd = open_dir()
    try:
        yield dfd
    finally:
        os.close(dfd)


def _unlink(name: str, dfd: int) -> bool:
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Prepared:
    """A record described at a checkpoint, to be written once its bytes are synced."""

    raw: bytes
    seq: int  # order of description: an older record never replaces a newer one
    gen: int  # the file's generation then (a cut, strip or removal starts a new one)


class RecordKeeper:
    """The record of one partial file: written after each data sync, cleared before the
    file is cut for a new representation, removed with the file.

    ``describe`` gives the record of the task's current state (set by the engine for a
    download; None: no record is kept). Described on the loop, written there or by the
    group commit's writer thread: the state below is guarded by one lock.
    """

    def __init__(self, partial: str) -> None:
        self.dir, self.name = os.path.split(partial)
        self.sidecar = os.path.basename(sidecar_path(partial))
        self.describe: Callable[[], PartialRecord | None] | None = None
        self._where: str | None = None  # "xattr" or "sidecar" once written by this process
        self._no_xattr = False
        self._warned = False
        self._sidecar_at = -SIDECAR_EVERY  # monotonic time of the last sidecar written
        self._behind = False  # a sidecar update was skipped since
        self._lock = threading.Lock()
        self._seq = 0  # records described
        self._written = 0  # seq of the newest record written
        self._gen = 0  # bumped when the file is cut, stripped or removed

    def _warn(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning("partial record of %s/%s: %s: %s", self.dir, self.name, what, exc)

    # -- writing ---------------------------------------------------------------------------

    def prepare(self) -> Prepared | None:
        """Describe the current state, for a write once the bytes it names are synced
        (:meth:`write_prepared`); None when no record is kept or none can be made."""
        if self.describe is None or record_mode() == "off":
            return None
        try:
            record = self.describe()
        except InvalidRequest as exc:  # a state no record can describe: keep the last one
            self._warn("not updated", exc)
            return None
        if record is None:
            return None
        raw = encode(record)
        with self._lock:
            self._seq += 1
            return Prepared(raw, self._seq, self._gen)

    def write(self, fd: int, open_dir: Callable[[], int], *, now: bool = False) -> bool:
        """Record the current state; call only right after the data's fdatasync.
        ``open_dir``: a new descriptor of the partial's directory (closed here); ``now``:
        do not skip a sidecar update for its rate limit. Returns whether a sidecar was
        created (its directory then needs an fsync)."""
        prepared = self.prepare()
        return prepared is not None and self.write_prepared(fd, prepared, open_dir, now=now)

    def write_prepared(
        self, fd: int, prepared: Prepared, open_dir: Callable[[], int], *, now: bool = False
    ) -> bool:
        """Write a record described earlier; call only once every byte it names is
        fdatasynced. Dropped when the file was cut, stripped or removed since it was
        described, or a newer record is already written. Returns as :meth:`write`."""
        with self._lock:
            if prepared.gen != self._gen or prepared.seq <= self._written:
                return False
            return self._put(fd, prepared, open_dir, now=now)

    def _put(self, fd: int, prepared: Prepared, open_dir: Callable[[], int], *, now: bool) -> bool:
        mode = record_mode()
        if mode == "off":
            return False
        raw = prepared.raw
        if mode == "auto" and not self._no_xattr and fits_xattr(raw):
            try:
                os.setxattr(fd, XATTR_NAME, raw)
            except OSError as exc:
                if exc.errno in _NO_XATTR:
                    self._no_xattr = True  # this filesystem: no more tries
                elif exc.errno not in _TOO_BIG:
                    self._warn("cannot set the attribute", exc)
                    return False
            else:
                self._written = prepared.seq
                if self._where != "xattr":
                    with contextlib.suppress(OSError, DestinationError), _dir(open_dir) as dfd:
                        _unlink(self.sidecar, dfd)
                    self._where = "xattr"
                return False
        if not now and time.monotonic() - self._sidecar_at < SIDECAR_EVERY:
            self._behind = True
            return False
        try:
            with _dir(open_dir) as dfd:
                self._write_sidecar(raw, dfd)
            self._sidecar_at, self._behind = time.monotonic(), False
            self._written = prepared.seq
        except (OSError, DestinationError) as exc:
            self._warn("cannot write the sidecar", exc)
            return False
        if self._where != "sidecar":
            with contextlib.suppress(OSError):
                os.removexattr(fd, XATTR_NAME)
            self._where = "sidecar"
            return True
        return False

    def catch_up(self, fd: int, open_dir: Callable[[], int]) -> bool:
        """The sidecar update the rate limit skipped, once the data is synced (the file is
        being closed: suspended, stopped, between attempts)."""
        return self._behind and self.write(fd, open_dir, now=True)

    def _write_sidecar(self, raw: bytes, dfd: int) -> None:
        tmp = self.sidecar + ".tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
        except FileExistsError:  # left by a crash (never followed, never truncated)
            _unlink(tmp, dfd)
            fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            # Without it a crash could leave the new name on an empty file: a record that
            # cannot be read, so a partial that cannot be adopted (measured: README).
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.sidecar, src_dir_fd=dfd, dst_dir_fd=dfd)

    # -- clearing and removing -------------------------------------------------------------

    def clear(self, fd: int, dfd: int) -> None:
        """Remove the record before ``fd``'s bytes are cut (a new representation may be
        written next), durably: the attribute with an fsync of the file, the sidecar with
        one of the directory. A record described before is never written after."""
        with self._lock:
            self._gen += 1
            if record_mode() == "off" and self._where is None:
                return
            removed = False
            try:
                os.removexattr(fd, XATTR_NAME)
                removed = True
            except OSError as exc:
                if exc.errno not in _ABSENT:
                    self._warn("cannot remove the attribute", exc)
            sidecar = False
            with contextlib.suppress(OSError):
                sidecar = _unlink(self.sidecar, dfd)
            if removed:
                os.fsync(fd)
            if sidecar:
                os.fsync(dfd)
            self._where = None

    def forget_stale(self, dfd: int) -> None:
        """A new file under the partial's name: a sidecar left from an earlier file of that
        name describes other bytes; it goes, durably, before any byte is written."""
        with self._lock:
            self._gen += 1
            with contextlib.suppress(OSError):
                if _unlink(self.sidecar, dfd):
                    os.fsync(dfd)
            self._where = None

    def strip(self, fd: int) -> None:
        """The finished file keeps no attribute: it may become world-readable, and a signed
        URL must not go with it (nor come back with a late checkpoint's record)."""
        with self._lock:
            self._gen += 1
            try:
                os.removexattr(fd, XATTR_NAME)
            except OSError as exc:
                if exc.errno not in _ABSENT:
                    self._warn("cannot remove the attribute", exc)

    def remove_sidecar(self, dfd: int) -> None:
        """The partial is gone (placed, cancelled, failed): so is its sidecar."""
        with self._lock:
            self._gen += 1
            for name in (self.sidecar, self.sidecar + ".tmp"):
                with contextlib.suppress(OSError):
                    _unlink(name, dfd)
            self._where = None


# -- reading (adopt) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    """A partial file and its record, as ``adopt`` found them."""

    partial: str  # absolute, its directory resolved
    record: PartialRecord  # clipped to the file's size
    where: str  # "xattr" or "sidecar"
    size: int
    ident: tuple[int, ...]  # (dir dev, dir ino, file dev, file ino, owner): as PartialFile
    clipped: str | None  # why the record was clipped, if it was


def _read_sidecar(dfd: int, name: str) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PartialRecordCorrupt(f"cannot open the sidecar {name}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise PartialRecordCorrupt(f"the sidecar {name} is not a file of yours")
        if st.st_size > MAX_RECORD:
            raise PartialRecordCorrupt(f"the sidecar {name} is too large to be a record")
        return os.read(fd, MAX_RECORD + 1)
    finally:
        os.close(fd)


def _open_partial(partial: str) -> tuple[int, int, os.stat_result, tuple[int, ...]]:
    """(dir fd, file fd, file stat, identity) of a partial file that may be adopted."""
    head, name = os.path.split(partial)
    try:
        dfd = os.open(head, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidRequest(f"cannot open the directory {head!r}: {exc.strerror}") from None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except OSError as exc:
        os.close(dfd)
        why = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
        raise InvalidRequest(f"cannot open the partial file {partial!r}: {why}") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = "belongs to another user"
    elif st.st_nlink != 1:
        problem = "has other hard links (it could change through them)"
    if problem is not None:
        os.close(fd)
        os.close(dfd)
        raise InvalidRequest(f"the partial file {partial!r} {problem}")
    dst = os.fstat(dfd)
    return dfd, fd, st, (dst.st_dev, dst.st_ino, st.st_dev, st.st_ino, st.st_uid)


def read_record(partial: str) -> Found:
    """The partial file at ``partial`` and its record, checked and clipped to its size.

    Raises :class:`NoPartialRecord`, :class:`PartialRecordCorrupt`,
    :class:`PartialRecordMismatch`, or :class:`InvalidRequest` for a file that cannot be
    adopted at all (missing, a symlink, another user's, hard-linked)."""
    head, name = os.path.split(os.path.abspath(partial))
    partial = os.path.join(os.path.realpath(head), name)
    dfd, fd, st, ident = _open_partial(partial)
    try:
        where = "xattr"
        try:
            raw: bytes | None = os.getxattr(fd, XATTR_NAME)
        except OSError as exc:
            if exc.errno not in _ABSENT:
                raise PartialRecordCorrupt(
                    f"cannot read the record of {partial!r}: {exc.strerror}"
                ) from None
            raw = None
        if raw is None:
            where = "sidecar"
            raw = _read_sidecar(dfd, os.path.basename(sidecar_path(partial)))
        if raw is None:
            raise NoPartialRecord(
                f"{partial!r} carries no partial record (no {XATTR_NAME} attribute, no "
                f"{os.path.basename(sidecar_path(partial))} beside it): nothing says what "
                "it is or where it came from"
            )
        try:
            record = decode(raw)
        except InvalidRequest as exc:
            raise PartialRecordCorrupt(f"the {where} record of {partial!r}: {exc}") from None
        if where == "sidecar" and record.partial is not None and record.partial != name:
            raise PartialRecordMismatch(
                f"the sidecar beside {partial!r} describes {record.partial!r}, another file "
                "(a sidecar copied or renamed without its partial)"
            )
        clipped, why = clip_to_file(record, st.st_size)
        return Found(partial, clipped, where, st.st_size, ident, why)
    finally:
        os.close(fd)
        os.close(dfd)


# -- starting a task from a found partial --------------------------------------------------

_DEFAULT_PARTIAL = re.compile(r"^\.(.+)\.[0-9a-f]{12}\.bgtransfer-part$")


def default_target(found: Found) -> str | None:
    """Where an adopted partial goes when the caller does not say: the name its record
    gives (or its own name, without the partial's dressing), in the partial's directory
    (the finished file is renamed into place, so it stays on that filesystem)."""
    head, name = os.path.split(found.partial)
    if found.record.path:
        return os.path.join(head, os.path.basename(found.record.path))
    m = _DEFAULT_PARTIAL.match(name)
    if m is not None:
        return os.path.join(head, m.group(1))
    for suffix in (".part", ".partial", ".crdownload", ".download"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return os.path.join(head, name[: -len(suffix)])
    return None


def adopted_segments(found: Found, asked: int) -> int:
    """Connections for an adopted download: a segmented partial needs the segmented driver
    (at least 2); the caller's choice otherwise."""
    if not found.record.segments or asked > 1:
        return asked
    unfinished = sum(1 for _, pos, end in found.record.segments if pos < end)
    return min(MAX_SEGMENTS, max(2, unfinished))


def adopt_into(snap: Snapshot, found: Found) -> None:
    """The first snapshot of a task that resumes ``found``: what its record vouches for,
    as if this store had committed it. Recovery then checks it against the file like any
    committed offset (bytes past it are cut, a segmented file of another length restarts)
    and the first request asks for the rest with Range and If-Range."""
    rec = found.record
    snap.total = rec.length
    snap.etag = rec.etag
    snap.last_modified = rec.last_modified
    snap.segments = rec.segments
    snap.offset = sum(pos - start for start, pos, _ in rec.segments) if rec.segments else rec.offset
    snap.partial_id = found.ident
    at = rec.offset if not rec.segments else snap.offset
    snap.detail = f"adopted {found.partial} ({at} bytes vouched for by its {found.where} record)"


_UNFINISHED = tuple(p.value for p in Phase if p is not Phase.DONE)


def refuse_in_use(store: Store, rows: Sequence[TaskRow]) -> None:
    """:class:`PartialInUse` when an unfinished task of ``store`` writes the partial file an
    adopting row would resume (same path, or the same file under another name)."""
    adopting = [r for r in rows if r.spec.adopt is not None]
    if not adopting:
        return
    live = store.page(None, phases=_UNFINISHED)
    for row in adopting:
        ident = row.snap.partial_id[2:4]
        for other in live:
            if other.partial == row.partial or (ident and other.snap.partial_id[2:4] == ident):
                raise PartialInUse(
                    f"{row.partial} is the partial file of task {other.id} of this store "
                    f"({other.snap.phase.value}): resume or cancel that task instead"
                )
