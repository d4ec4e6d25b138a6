"""Fleet mode on disk: taking a task over from a worker that lost its claim.

A worker whose lease ran out may still be running (paused, cut off from the store: a
zombie) and hold the task's partial file open. The store already refuses its commits (the
claim's generation fences them), but nothing fences a file descriptor. So the new owner
never writes into the zombie's file: it resumes into a file of its own, named for its
generation, a fresh inode that holds only the committed prefix (a reflink where the file
system has them, else ``copy_file_range``, else a plain copy), and records that name with
its claim before it writes a byte. The zombie's descriptor then writes into an orphan inode,
and everything it does by name (reopen after a retry, truncate, remove, place) reaches its
own old name, which no longer names anything the new owner uses. A restart with a changed
resource therefore never mixes the zombie's bytes into the result.

What stays open, by design (see the README's "Fleet mode"): the final rename. The worker
records "placing" (the sealed file's whole offset) with a fenced commit and renames right
after it, with no await in between. A zombie frozen exactly between that commit and the
rename(2) may still place its file later; that file is the committed, sealed, complete
one (the same bytes the new owner resumes from), so only a resource that changed after the
placing commit (a new version the new owner downloaded) could be replaced by the older,
complete version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import re
from collections.abc import Callable
from typing import Protocol

from bgtransfer._engine._commit import Committer
from bgtransfer._engine._files import PartialFile, fsync_dir
from bgtransfer._engine._live import Live
from bgtransfer._models import Phase
from bgtransfer._store._base import Store, TaskRow

__all__ = [
    "SETTLED",
    "Claims",
    "copy_prefix",
    "drop_old",
    "generation_partial",
    "localize",
    "stop_lost",
    "take_over",
]

log = logging.getLogger("bgtransfer")

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_CHUNK = 1 << 24
# A task in these phases, no longer held live, is released by its worker.
SETTLED = (Phase.DONE, Phase.SUSPENDED, Phase.QUEUED)
_GEN = re.compile(r"\.g\d+(?=\.bgtransfer-part$)|\.g\d+$")


class Claims(Protocol):
    """What an engine whose tasks come from claims (a fleet worker) asks of its feeder."""

    def open_store(self) -> Store:
        """A connection of the committer thread's own."""

    def feed(self) -> None:
        """There is room: claim more (instead of reading the local queue)."""

    def settled(self, task_id: str, phase_value: str) -> None:
        """The task stopped running here (done, suspended, queued); its commit landed."""

    def lost(self, task_id: str) -> None:
        """A commit of the task was refused: another worker holds it now."""


def generation_partial(path: str, generation: int) -> str:
    """The partial file name of the claim ``generation`` (unique per claim)."""
    base = _GEN.sub("", path)
    if base.endswith(".bgtransfer-part"):
        return f"{base[: -len('.bgtransfer-part')]}.g{generation}.bgtransfer-part"
    return f"{base}.g{generation}"


def copy_prefix(src: int, dst: int, length: int) -> str:
    """Make ``dst`` hold the first ``length`` bytes of ``src``; returns how (reflink,
    copy_file_range, copy). ``dst`` is empty."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(dst, FICLONE, src)
        os.ftruncate(dst, length)
        return "reflink"
    done = 0
    try:
        while done < length:
            n = os.copy_file_range(src, dst, min(_CHUNK, length - done), done, done)
            if n == 0:
                break  # src is shorter than length (it never is: the caller measured it)
            done += n
        return "copy_file_range"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    while done < length:
        block = os.pread(src, min(_CHUNK, length - done), done)
        if not block:
            break
        os.pwrite(dst, block, done)
        done += len(block)
    return "copy"


def localize(row: TaskRow) -> TaskRow:
    """The task's recorded file identities as this host sees them.

    A partial file is known by (device, inode) (see ``PartialFile``); on a shared volume
    another host sees the same directory and file under the same inode numbers but, as a
    rule (NFS, CephFS), another device number. A task a worker on another host began is
    re-anchored here when the inode numbers (and the file's owner) match; anything else is
    left as recorded, and the engine refuses it as before."""
    ident = row.snap.partial_id
    if len(ident) < 2 or not row.partial:
        return row
    try:
        st = os.stat(os.path.dirname(row.partial))
    except OSError:
        return row  # unreachable here: the caller gives the task back
    if (st.st_dev, st.st_ino) == ident[:2] or st.st_ino != ident[1]:
        return row
    new: tuple[int, ...] = (st.st_dev, st.st_ino)
    if len(ident) == 5:
        try:
            fst = os.stat(row.partial, follow_symlinks=False)
        except OSError:
            fst = None
        if fst is not None and (fst.st_ino, fst.st_uid) == (ident[3], ident[4]):
            new += (fst.st_dev, fst.st_ino, fst.st_uid)
    log.info("task %s: its files as this host sees them: %s -> %s", row.id, ident, new)
    return dataclasses.replace(row, snap=dataclasses.replace(row.snap, partial_id=new))


def take_over(row: TaskRow, generation: int) -> tuple[TaskRow, str | None]:
    """The row the claim ``generation`` runs: its partial file a fresh inode under the
    generation's name, holding the committed prefix of the previous holder's file (none if
    that file is gone or not the task's). Blocking file I/O: run it off the loop.

    Returns the new row and the old file's name, to remove once the store has recorded the
    new name (until then the old one is what a crash recovers from). DestinationError when
    the task's directory is not reachable here."""
    if row.spec.kind == "upload" or not row.partial:
        return row, None  # an upload's server holds its offset; nothing on disk to fence
    snap = row.snap
    new_path = generation_partial(row.partial, generation)
    old = PartialFile(row.partial, dataclasses.replace(snap))
    src = old.open_read()  # DestinationError: the directory is not reachable here
    new_snap = dataclasses.replace(snap, partial_id=snap.partial_id[:2])
    if src < 0:
        # Nothing to resume from: recovery finds no partial file and starts over.
        return dataclasses.replace(row, partial=new_path, snap=new_snap), None
    new = PartialFile(new_path, new_snap)
    try:
        new.open(0)
        size = os.fstat(src).st_size
        # One stream: only the committed prefix (bytes past it may be the zombie's, torn).
        # Segments: the file is always `total` long; the table says which bytes count.
        length = size if snap.segments else min(size, snap.offset)
        how = copy_prefix(src, new.fd, length)
        os.fsync(new.fd)
        log.info("task %s: took over %d committed bytes (%s)", row.id, length, how)
    finally:
        new.close(sync=False)
        os.close(src)
    fsync_dir(new.dir)  # the new name is durable before the store names it
    return dataclasses.replace(row, partial=new_path, snap=new_snap), row.partial


def drop_old(old: TaskRow) -> None:
    """Remove the previous holder's file (by identity: ``old`` is the row as claimed) once
    the new name is on record; a zombie still writing keeps its inode, now nameless."""
    PartialFile(old.partial, dataclasses.replace(old.snap)).remove()


def stop_lost(
    commit: Committer | None,
    held: dict[str, Live],
    task_id: str,
    close: Callable[[Live], None],
) -> None:
    """A zombie's stop: the task's claim is gone. Its later saves fail in the committer
    without reaching the store; its runner is cancelled at its next await; its descriptors
    are closed (no file is changed: truncating, removing or placing is the new owner's)."""
    if commit is not None:
        commit.lost.add(task_id)
        commit.fences.pop(task_id, None)
    live = held.pop(task_id, None)
    if live is None:
        return
    live.attempt = None  # ending it would be a (refused) commit
    runner = live.runner
    if runner is not None and not runner.done():
        runner.cancel()
    close(live)
    live.finished.set()
