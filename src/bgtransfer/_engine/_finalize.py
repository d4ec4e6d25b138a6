"""Placing a finished download: check it, make it durable, give it its name.

Order (the strace audit checks it): the bytes and the full offset are durable before the
target name appears, and the directory is fsynced by the next group commit.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time

from bgtransfer._engine._commit import Save
from bgtransfer._engine._context import Context
from bgtransfer._engine._files import file_mode
from bgtransfer._engine._live import Live
from bgtransfer._engine._recovery import BOOT_ID
from bgtransfer._engine._verify import before_placing
from bgtransfer._exceptions import DestinationError, TransferError
from bgtransfer._protocol import _machine as M

__all__ = ["finalize"]


async def finalize(ctx: Context, live: Live, action: M.Finalize) -> M.Event:
    if live.slot is not None:
        # The network part is over: the next transfer may start while this one syncs and
        # commits (the limits are on connections, not on disk work).
        live.slot.release()
    # Not fsynced here: the group commit fsyncs it just before the offset that covers
    # it, so files finishing together share one trip to the writer thread.
    live.part.close(sync=False)
    unchecked = await before_placing(live)  # integrity (issue 17): see _verify
    if unchecked is not None:
        return unchecked
    m, row = live.machine, live.row
    check = functools.partial(
        live.part.seal,
        expected_length=action.expected_length,
        sha256=action.sha256,
        mode=file_mode(m.spec.umask),
    )
    try:
        if action.sha256 is not None:
            # Hashing the file read back from disk takes seconds for big files: not on
            # the loop.
            await asyncio.get_running_loop().run_in_executor(None, check)
        else:
            check()
    except TransferError as exc:
        return M.FinalizeFailed(exc)
    # The whole offset goes into the save below, which fsyncs the file (sync_file) before
    # it commits: the machine may vouch for every byte.
    ctx.apply(live, M.Sealed())
    attempts = ctx.history.take_ended(live)
    snap = m.checkpoint(ctx.clock(), BOOT_ID)
    # The bytes and the full offset are durable before the target name appears, so a
    # crash between the two finds "placed, completion not recorded" (reconciled to
    # done), never a short file.
    try:
        await ctx.commit.submit(
            Save(row.id, snap, time.time(), attempts=attempts, sync_file=row.partial)
        )
    except DestinationError as exc:
        return M.FinalizeFailed(exc)
    # From here on no await: the name appears and the machine hears of it in one step,
    # so nobody sees the file while the task still says running.
    try:
        live.part.place(row.path, overwrite=row.overwrite)
    except TransferError as exc:
        return M.FinalizeFailed(exc)
    live.dir_unsynced = os.path.dirname(row.path)
    return M.Finalized()
