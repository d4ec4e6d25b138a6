"""The home's disk is full (SQLite cannot commit): stop every transfer at its bytes, keep
every file, and go on by themselves once there is space again."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

from bgtransfer._engine._commit import Committer
from bgtransfer._engine._live import Live
from bgtransfer._exceptions import StoreFull
from bgtransfer._models import Phase

__all__ = ["FULL_POLL", "DiskFull", "has_room"]

log = logging.getLogger("bgtransfer")

FULL_POLL = 1.0  # seconds between looks at a full disk
ACTIVE = (Phase.QUEUED, Phase.CONNECTING, Phase.TRANSFERRING, Phase.WAITING_RETRY)


def has_room(path: str) -> bool:
    """Free space on the store's disk to go on with: 5% of it, 64 MiB at most."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return True  # cannot tell: the next commit will say
    return st.f_bavail * st.f_frsize >= min(64 << 20, st.f_blocks * st.f_frsize // 20)


class DiskFull:
    def __init__(
        self,
        store_path: str,
        live: dict[str, Live],
        *,
        suspend: Callable[[Live], Coroutine[Any, Any, None]],
        resume: Callable[[Live], None],
        pump: Callable[[], None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.store_path = store_path
        self.live = live
        self.suspend = suspend  # stop one task and say why (SUSPENDED)
        self.resume = resume  # start one suspended task again
        self.pump = pump
        self.spawn = spawn
        self.committer: Committer | None = None  # set when the engine starts
        self.closed = False
        self.reason: str | None = None  # why nothing can be committed; None: it can
        self._suspended: set[str] = set()
        self._watch: asyncio.Task[None] | None = None

    def check(self) -> None:
        """Refuse new work (and control calls, whose caller would wait for a change that
        cannot land) while nothing can be committed."""
        if self.reason is not None:
            raise StoreFull(self.reason)

    def full(self, reason: str) -> None:
        """Nothing can be committed: stop every transfer at its bytes, keep every file.

        The tasks say SUSPENDED with the reason (in memory; the store learns it once it
        can commit again) and go on by themselves when there is space. A task that is
        placing its finished file just waits for its commit.
        """
        if self.reason is not None or self.closed:
            return
        self.reason = reason
        assert self.committer is not None
        self.committer.mark_full()
        log.error("suspending every transfer: %s", reason)
        for live in list(self.live.values()):
            if live.machine.snap.phase in ACTIVE:
                self._suspended.add(live.row.id)
                self.spawn(self.suspend(live))
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._wait_for_room())

    async def _wait_for_room(self) -> None:
        """Resume once nothing waits to be committed and the disk has room: a commit that
        squeezes into the WAL's old pages is not yet space (resuming then would flap)."""
        try:
            while self.reason is not None and not self.closed:
                await asyncio.sleep(FULL_POLL)
                assert self.committer is not None
                if not self.committer.full and has_room(self.store_path):
                    self._back()
        finally:
            self._watch = None

    def _back(self) -> None:
        if self.reason is None or self.closed:
            return
        log.warning("the task store commits again: resuming the suspended transfers")
        self.reason = None
        ids, self._suspended = self._suspended, set()
        for task_id in ids:
            live = self.live.get(task_id)
            if live is not None and live.machine.snap.phase is Phase.SUSPENDED:
                self.resume(live)
        self.pump()
