"""Stored state against what is on disk, after a crash: the engine's half of recovery.

The decision is the pure :func:`bgtransfer._protocol._recovery.recover`; this module only
reads the facts it needs from the disk (:class:`DiskFacts`) and feeds the events it returns
to the machine, through the engine's ``apply`` (``handle()`` plus carrying out the actions:
``TruncatePartial``, ``Persist``). Nothing here edits a snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bgtransfer._engine._files import size_of
from bgtransfer._engine._live import Live
from bgtransfer._exceptions import DestinationError
from bgtransfer._protocol import _machine as M
from bgtransfer._protocol._recovery import DiskFacts, needs_disk, recover, same_boot

__all__ = ["BOOT_ID", "disk_facts", "reconcile"]

log = logging.getLogger("bgtransfer")


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


# Stamped on every checkpoint (TransferMachine.checkpoint): bytes written in this boot
# survive a crash of the process in the page cache, not a crash of the machine.
BOOT_ID = _boot_id()


def disk_facts(live: Live) -> DiskFacts:
    """What recovery needs to know of the task's files."""
    try:
        size = live.part.size()
    except DestinationError as exc:
        # The directory is not the task's any more: the next open fails the task.
        log.warning("task %s: %s", live.row.id, exc.message)
        return DiskFacts(None, refused=exc.message)
    # The destination matters only without a partial file (was it placed?): no stat else.
    return DiskFacts(size, size_of(live.row.path) if size is None else None)


def reconcile(
    live: Live, apply: Callable[[Live, M.Event], None], *, owner_died: bool = False
) -> None:
    """Bring the task in line with its files on disk (after a crash), through its machine.

    ``apply`` hands an event to the machine and carries out its actions (a task found
    placed is persisted as complete). ``owner_died``: a foreground task whose process
    exited, interrupted once its files are reconciled.
    """
    m = live.machine
    disk = disk_facts(live) if needs_disk(m.spec, m.snap) else None
    events = recover(
        m.spec, m.snap, disk, same_boot=same_boot(m.snap, BOOT_ID), owner_died=owner_died
    )
    for event in events:
        if isinstance(event, M.Recovered) and event.note is not None:
            # Keeping bytes (or finding the file placed) is good news; losing them is not.
            good = event.placed or event.offset > m.snap.offset
            level = logging.INFO if good else logging.WARNING
            log.log(level, "task %s: %s", live.row.id, event.note)
        apply(live, event)
