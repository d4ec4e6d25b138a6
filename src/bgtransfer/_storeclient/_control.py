"""Suspend, resume and cancel over a PostgreSQL db, with no local daemon.

The pure machine decides every change, as it does in the engine: the stored snapshot is
restored into a machine, the control event handled, and the snapshot it persists is what the
db writes (with the state event) in the transaction that holds the row's lock. A task a
worker holds is asked of that worker instead; the call waits until the worker applied it, or
its lease ran out (then the request is applied here), or CONTROL_WAIT passed (the request
stays recorded: the holder applies it when it next looks).

A cancel's cleanup is leased in the transaction that cancels (see ``_pgcontrol``): a
download's partial file is removed here, under a lease of this client's; a tus or IETF-draft
upload's resource is deleted on its server by a worker (the engine's termination request:
this client has no HTTP stack), and the call waits for that as for a holder.
Either way a client that dies half-way strands nothing: a worker finishes the cancel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bgtransfer._engine._files import PartialFile
from bgtransfer._exceptions import TaskNotFound
from bgtransfer._models import Phase
from bgtransfer._protocol import _machine as M
from bgtransfer._protocol._upload import UploadMachine
from bgtransfer._store._base import TaskRow
from bgtransfer._store._pgcontrol import Change, Controlled
from bgtransfer._store._postgres import PostgresStore
from bgtransfer._storeclient._wakeups import Wakeups

__all__ = ["CONTROL_WAIT", "control", "decide", "get"]

CONTROL_WAIT = 30.0  # seconds a control call waits for the holder of the task to apply it

Run = Callable[..., Awaitable[Any]]

_EVENTS: dict[str, Callable[[], M.Event]] = {
    "suspend": M.SuspendRequested,
    "resume": M.ResumeRequested,
    "cancel": M.CancelRequested,
}
# The phases in which a request asked of a holder has been carried out (by it or otherwise).
_DONE_BY = {
    "suspend": (Phase.SUSPENDED, Phase.CANCELING, Phase.DONE),
    "cancel": (Phase.CANCELING, Phase.DONE),
}


def decide(event: M.Event, satisfied: tuple[Phase, ...] = ()) -> Callable[[TaskRow], Change | None]:
    """What the machine makes of ``event`` on a stored task (None: nothing to store; it
    raises InvalidTransition where the task's phase refuses the event). ``satisfied``:
    phases in which the caller's request counts as done already."""

    def run(row: TaskRow) -> Change | None:
        if row.snap.phase in satisfied:
            return None
        kind = UploadMachine if row.spec.kind == "upload" else M.TransferMachine
        machine = kind.from_snapshot(row.spec, row.snap)
        now = time.monotonic()
        actions = machine.handle(event, now=now)
        if not any(isinstance(a, M.Persist) for a in actions):
            return None  # a phase that ignores the event
        hook = (
            "pending" if machine.terminal and row.on_complete and row.hook_state is None else None
        )
        cleanup = None
        if machine.snap.phase is Phase.CANCELING:
            cleanup = _cleanup_by(row)
        return Change(machine.snapshot(now), machine.state.value, hook, cleanup)

    return run


def _finished(row: TaskRow) -> bool:
    return row.snap.phase is Phase.DONE


def _cleanup_by(row: TaskRow) -> str:
    """Who finishes a cancel: a worker for a resumable upload that has a resource on its
    server (only the engine speaks HTTP), this client for anything else."""
    return "worker" if row.spec.kind == "upload" and row.snap.upload_url else "client"


def _remove_partial(row: TaskRow) -> None:
    """A cancelled download's partial file goes (the engine's own careful removal: only the
    file this task wrote). An upload has nothing here; a tus/IETF server drops an upload
    resource that is never finished by itself."""
    if row.spec.kind == "download" and row.partial:
        PartialFile(row.partial, row.snap).remove()


async def _clean_up(db: PostgresStore, run: Run, row: TaskRow, token: int) -> TaskRow:
    """Finish a cancel whose cleanup this client leased (generation ``token``): remove the
    partial (the snapshot still names it), then CancelCleaned, fenced by the lease."""
    await run(_remove_partial, row)
    done: TaskRow | None = await run(db.finish_cleanup, row.id, token, decide(M.CancelCleaned()))
    return done if done is not None else await run(get, db, row.id)  # a worker finishes it


async def control(
    db: PostgresStore, run: Run, wakeups: Wakeups, task_id: str, verb: str
) -> TaskRow:
    """Suspend, resume or cancel ``task_id``; the task as stored once that is done."""
    event = _EVENTS[verb]()
    action = verb if verb in _DONE_BY else None  # a resume is never asked of a holder
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONTROL_WAIT
    first: TaskRow = await run(get, db, task_id)
    await wakeups.start()
    asked = False
    with wakeups.watch(first.session, task_id) as watch:
        while True:
            satisfied = _DONE_BY.get(verb, ()) if asked else ()
            got: Controlled = await run(db.control_task, task_id, action, decide(event, satisfied))
            if got.outcome != "requested":
                break
            asked = asked or action is not None
            left = deadline - loop.time()
            if left <= 0:
                return got.row  # still held: the request stays for the holder
            # Woken by the holder's commit, else when its lease runs out.
            await watch.sleep(min(got.lease_left + 0.05, left))
        row = got.row
        if verb != "cancel" or row.snap.phase is not Phase.CANCELING or got.holder is not None:
            return row
        token = got.token
        if token is None:  # canceling already, its cleanup not leased: lease it now
            token = await run(db.take_cleanup, task_id, _cleanup_by(row))
        if token is not None and _cleanup_by(row) == "client":
            return await _clean_up(db, run, row, token)
        while not _finished(row):  # a worker finishes it
            left = deadline - loop.time()
            if left <= 0:
                break  # no worker yet: the first that runs finishes it
            await watch.sleep(left)
            row = await run(get, db, task_id)
        return row


def get(db: PostgresStore, task_id: str) -> TaskRow:
    row = db.get(task_id)
    if row is None:
        raise TaskNotFound(f"no task with id {task_id!r}", task_id=task_id)
    return row
