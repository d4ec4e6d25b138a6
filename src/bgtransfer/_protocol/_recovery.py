"""What a stored task becomes after a crash or a restart, given what is on disk.

A pure function of the stored snapshot and a few facts the engine reads from the disk
(:class:`DiskFacts`): it returns the events to feed to ``TransferMachine.handle()``, so the
machine stays the only thing that changes a task, and every decision here is tested without
a file. The rules, in the order they apply (a download that is not finished or canceling):

* **Segments.** A segmented download's file is always exactly ``total`` bytes (holes where
  nothing was written). Another size means someone else touched it: its segment table and
  everything known about the representation are dropped, and it starts over. A missing file
  drops the table too, unless the file was placed (the task is then complete).
* **No partial file.** If its bytes were all there and the destination holds a file of
  exactly ``total`` bytes, the file was placed and only the completion was lost: the task is
  complete. Otherwise it starts over from 0, as a new download.
* **A shorter file** than the committed offset (the disk lost what the store vouched for):
  resume after the bytes that are there.
* **A longer file** (one stream, no segments): the bytes past the checkpoint are kept only
  when they cannot be garbage: written in this boot (a crash of the process leaves them in
  the page cache, whole), under a recorded validator (resume checks it with If-Range), and
  within the known length. Otherwise they are cut off before a checkpoint could vouch for
  them (``TruncatePartial``).

Then a foreground task whose process died is interrupted (SUSPENDED until a person resumes
it; a canceling one finishes its cleanup).
"""

from __future__ import annotations

from dataclasses import dataclass

from bgtransfer._exceptions import InvalidTransition
from bgtransfer._models import Phase
from bgtransfer._protocol._events import Event, Interrupted, Recovered
from bgtransfer._protocol._task import Snapshot, Spec

__all__ = ["DiskFacts", "needs_disk", "recover", "same_boot"]


@dataclass(frozen=True, slots=True)
class DiskFacts:
    """What the engine found on disk for one download.

    ``partial_size``: bytes in the task's own partial file; None when there is none (or the
    file under its name is not the task's, which the engine discards). ``target_size``: the
    size of the file at the destination, None when there is none; it matters only when
    there is no partial file, so the engine may skip that stat otherwise. ``refused``: the
    partial file's directory is not the task's any more (why); nothing is decided from it
    (the next open fails the task).
    """

    partial_size: int | None
    target_size: int | None = None
    refused: str | None = None


def same_boot(snap: Snapshot, boot_id: str | None) -> bool:
    """Was the snapshot stored in the boot ``boot_id`` (this one)? Unknown boots never are."""
    return boot_id is not None and snap.boot_id == boot_id


def needs_disk(spec: Spec, snap: Snapshot) -> bool:
    """Does :func:`recover` need :class:`DiskFacts` for this task? Not for a finished or
    canceling task, nor for an upload (its server holds the offset)."""
    return spec.kind != "upload" and snap.phase not in (Phase.DONE, Phase.CANCELING)


def recover(
    spec: Spec,
    snap: Snapshot,
    disk: DiskFacts | None,
    *,
    same_boot: bool,
    owner_died: bool = False,
) -> list[Event]:
    """The events that bring a stored task in line with the disk, in order.

    ``disk``: None only when :func:`needs_disk` says so. ``same_boot``: the snapshot was
    stored in this boot (:func:`same_boot`). ``owner_died``: a foreground task whose process
    exited; it is interrupted after the files are reconciled.
    """
    if snap.phase is Phase.DONE:
        return []
    events: list[Event] = []
    offset = snap.offset
    if needs_disk(spec, snap):
        if disk is None:
            raise InvalidTransition("recovering a download needs what is on disk")
        found = _reconcile(snap, disk, same_boot=same_boot)
        if found is not None:
            if found.placed:
                return [found]
            events.append(found)
            offset = found.offset
    if owner_died:
        where = f"byte {offset}" if offset else "the start"
        why = "interrupted: the process running it exited; resume() continues from " + where
        events.append(Interrupted(why))
    return events


def _reconcile(snap: Snapshot, disk: DiskFacts, *, same_boot: bool) -> Recovered | None:
    if disk.refused is not None:
        return None
    size, offset, total = disk.partial_size, snap.offset, snap.total
    forget = drop = False
    note = None
    if snap.segments:
        drop, forget = _segments_lost(snap, size)
        if forget:
            note = "partial file does not fit its segments, restarting"
            offset, total = 0, None
    segments = bool(snap.segments) and not drop
    validated = not forget and (snap.etag is not None or snap.last_modified is not None)
    trim = False
    if size is None:
        if offset > 0 and total is not None and disk.target_size == total and offset >= total:
            # Placed, but the COMPLETED commit was lost in the crash.
            return Recovered(offset, placed=True, note="found placed: its completion was lost")
        if offset:
            note = "partial file missing, restarting from 0"
        offset, forget = 0, True
    elif size < offset:
        note = f"partial file has {size} bytes, fewer than committed {offset}"
        offset = size
    elif size > offset and not segments:  # a segmented file has holes
        if same_boot and validated and total is not None and size <= total:
            note = f"keeping {size - offset} bytes written after the last checkpoint"
            offset = size
        else:
            trim = True
    # Nothing to forget when nothing is known (a task that never got a response).
    forget = forget and (snap.total, snap.etag, snap.last_modified) != (None, None, None)
    if (offset, forget, drop, trim) == (snap.offset, False, False, False):
        return None
    return Recovered(offset, forget, drop, trim, note=note)


def _segments_lost(snap: Snapshot, size: int | None) -> tuple[bool, bool]:
    """(drop the segment table, forget the representation too) for a segmented file."""
    if size is None:
        # Gone: no byte the table describes is on disk, even with every segment done (a
        # placed file completes the task before the table matters).
        return True, False
    if snap.total is not None and size == snap.total:
        return False, False
    return True, True
