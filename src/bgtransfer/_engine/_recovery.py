"""Stored state against what is on disk: at pick-up after a crash, and at close.

Every place where the engine edits a machine's snapshot directly (instead of through
``handle()``) is in this module, so that replacing these edits by the pure recovery of
:mod:`bgtransfer._protocol` is a change of one module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bgtransfer._engine._files import size_of
from bgtransfer._engine._live import Live
from bgtransfer._exceptions import DestinationError
from bgtransfer._models import Phase
from bgtransfer._protocol import _machine as M

__all__ = ["BOOT_ID", "keep_offset", "reconcile", "reconcile_segments", "stored"]

log = logging.getLogger("bgtransfer")


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


BOOT_ID = _boot_id()


def stored(m: M.TransferMachine, now: float) -> M.Snapshot:
    """The snapshot to save, stamped with this boot: its bytes were written in this boot."""
    m.snap.boot_id = BOOT_ID
    return m.snapshot(now)


def keep_offset(m: M.TransferMachine) -> None:
    """The daemon stops with its tasks running: everything written is synced by the save
    that follows, so the offset reached is the one to resume from."""
    m.committed = m.snap.offset


def _tail_is_sound(m: M.TransferMachine, size: int) -> bool:
    """May bytes of a one-stream download past the committed offset be kept? Only if the
    machine has not restarted since the checkpoint (unsynced bytes die with the page cache,
    not with the process) and the validator they were fetched under is on record (resume
    checks it with If-Range)."""
    snap = m.snap
    return (
        BOOT_ID is not None
        and snap.boot_id == BOOT_ID
        and (snap.etag is not None or snap.last_modified is not None)
        and snap.total is not None
        and size <= snap.total
    )


def reconcile_segments(m: M.TransferMachine, size: int | None) -> bool:
    """Check a segmented partial file after a restart; True when it had to start over.

    The file of a segmented download is always exactly ``total`` bytes long (holes where
    nothing was written). Any other size means someone else touched it, so its stored
    segments cannot be trusted. A missing file is left to the plain reconciliation (which
    also recognises a file placed just before a crash).
    """
    total = m.snap.total
    if size is None:
        if total is None or m.snap.offset < total:
            m.snap.segments = ()
        return False
    if total is not None and size == total:
        return False
    m.snap.offset = m.committed = 0
    m.snap.segments = ()
    m.snap.total = m.snap.etag = m.snap.last_modified = None
    return True


def reconcile(live: Live, persist: Callable[[Live], None]) -> None:
    """Bring the stored offset in line with the files on disk (after a crash).

    ``persist`` saves the task when it turns out finished (placed, but its completion was
    not committed).
    """
    m, row = live.machine, live.row
    if m.terminal or m.spec.kind == "upload" or m.snap.phase is Phase.CANCELING:
        return
    try:
        size = live.part.size()
    except DestinationError as exc:
        # The directory is not the task's any more: the next open fails the task.
        log.warning("task %s: %s", row.id, exc.message)
        return
    if m.snap.segments and reconcile_segments(m, size):
        log.warning("task %s: partial file does not fit its segments, restarting", row.id)
    if size is None:
        _no_partial(live, persist)
    elif size < m.snap.offset:
        log.warning(
            "task %s: partial file has %d bytes, fewer than committed %d",
            row.id,
            size,
            m.snap.offset,
        )
        m.snap.offset = m.committed = size
    elif size > m.snap.offset and not m.snap.segments:  # a segmented file has holes
        _longer_partial(live, size)


def _no_partial(live: Live, persist: Callable[[Live], None]) -> None:
    m, row = live.machine, live.row
    target_size = size_of(row.path)
    total = m.snap.total
    if m.snap.offset > 0 and total is not None and target_size == total and m.snap.offset >= total:
        # Placed, but the COMPLETED commit was lost in the crash.
        m.snap.phase = Phase.DONE
        m.snap.detail = "completed"
        m.committed = m.snap.offset
        persist(live)
        return
    if m.snap.offset:
        log.warning("task %s: partial file missing, restarting from 0", row.id)
    m.snap.offset = m.committed = 0
    m.snap.total = m.snap.etag = m.snap.last_modified = None


def _longer_partial(live: Live, size: int) -> None:
    m, row = live.machine, live.row
    if _tail_is_sound(m, size):
        # The process died, the machine did not: what it wrote after its last checkpoint
        # is in the page cache, whole, so resume after it.
        log.info(
            "task %s: keeping %d bytes written after the last checkpoint",
            row.id,
            size - m.snap.offset,
        )
        m.snap.offset = m.committed = size
        return
    # Written in an earlier boot and maybe never synced: cut them off now, before a
    # checkpoint of this boot could vouch for them.
    try:
        live.part.open(m.snap.offset)
    except (DestinationError, OSError) as exc:
        log.warning("task %s: cannot trim the partial file: %s", row.id, exc)
    finally:
        live.part.close()
