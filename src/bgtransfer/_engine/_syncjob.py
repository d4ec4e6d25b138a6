"""A checkpoint's data sync, handed from the loop to the group commit's writer thread.

The durability order of a checkpoint stays write -> fdatasync -> record -> commit offset;
only the thread changes: the loop goes on receiving and writing while the disk catches up
(``PartialFile.sync_later`` makes the job, ``Committer`` runs it before the commit).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Protocol

from bgtransfer._engine._sidecar_io import Prepared, RecordKeeper
from bgtransfer._exceptions import DestinationError

__all__ = ["SyncJob"]

log = logging.getLogger("bgtransfer")


class _Synced(Protocol):
    """What a job needs of the partial file (``PartialFile``)."""

    path: str
    fd: int
    record: RecordKeeper
    sync_error: DestinationError | None

    def open_dir(self) -> int: ...

    def fsync_dir_entry(self) -> None: ...


class SyncJob:
    """A checkpoint's data sync, run by the group commit's writer thread just before it
    commits the offset the checkpoint names: fdatasync of a duplicate of the partial's
    descriptor (the loop keeps writing through the original), then the record described
    at the checkpoint (it names only bytes written before this sync began), then, for a new
    file or a new sidecar, an fsync of the directory.

    A failed fdatasync stays on the file (``PartialFile.sync_error``): Linux reports a
    writeback error once per open file, and the loop's own descriptor shares this one's, so
    a later sync would succeed over lost pages. The next checkpoint and the seal refuse.
    """

    __slots__ = ("_dir", "_drop", "_fd", "_part", "_record")

    def __init__(
        self,
        part: _Synced,
        record: Prepared | None,
        *,
        new_entry: bool,
        drop: tuple[int, int] | None = None,
    ) -> None:
        self._fd = os.dup(part.fd)
        self._part = part
        self._record = record
        self._dir = new_entry
        self._drop = drop  # (start, end): synced bytes to let go of from the page cache

    def run(self) -> None:
        """In the writer thread. DestinationError: the bytes may not be durable."""
        part = self._part
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            part.sync_error = DestinationError(f"cannot fsync {part.path}: {exc.strerror}")
            log.error("%s", part.sync_error.message)
            raise part.sync_error from None
        else:
            if self._record is not None and part.record.write_prepared(
                self._fd, self._record, part.open_dir
            ):
                self._dir = True  # a new sidecar's name
            if self._drop is not None:
                start, end = self._drop
                with contextlib.suppress(OSError):  # advice only
                    os.posix_fadvise(self._fd, start, end - start, os.POSIX_FADV_DONTNEED)
        finally:
            self.discard()
        if self._dir:
            part.fsync_dir_entry()

    def discard(self) -> None:
        """Not run (the store is closing, the claim was lost): let the descriptor go."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
