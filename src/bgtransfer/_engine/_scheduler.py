"""Admission: which queued tasks get a runner, and when to look again.

Queued work lives in the store, not in memory: only tasks that run (or wait to retry) have
a coroutine, so a queue of 100 000 costs rows, not megabytes. The limits on connections
(per host, in all) are the :class:`Limiter`'s; this module only bounds the runners.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

from bgtransfer._engine._limiter import Limiter
from bgtransfer._engine._live import Live
from bgtransfer._store._base import Store, TaskRow

__all__ = ["Scheduler"]

WAKE_CAP = 60.0  # seconds: a clock step (suspend, NTP) is noticed within a minute


class Scheduler:
    def __init__(
        self,
        store: Store,
        limiter: Limiter,
        live: dict[str, Live],
        *,
        background: bool,
        owner: str,
        admit: Callable[[TaskRow], None],
        wake: Callable[[], None],
    ) -> None:
        self.store = store
        self.limiter = limiter
        self.live = live
        self.background = background
        self.owner = owner
        self.admit = admit  # take a queued row in (reconcile, then run or hold)
        self.wake = wake  # pump again (the engine's, which knows when not to)
        self._wake: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self._soon_loop: asyncio.AbstractEventLoop | None = None
        # Rows of submits just committed, for the next pump only (see ``remember``).
        self._fresh: dict[str, TaskRow] = {}

    def runner_cap(self) -> int:
        # Runners include tasks waiting for a per-host slot or backing off; allow some beyond
        # max_active so one busy host does not hold up the others queued behind it.
        return max(64, 4 * self.limiter.total)

    def soon(self, pump: Callable[[], None]) -> None:
        """Run ``pump`` at the loop's next turn, once however many ask before it runs.

        Sixteen completions landing in one group commit each ask for a pump (so do
        the submits of many clients): one query of the store's queue serves them all.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a synchronous caller without a loop: at once
            pump()
            return
        if self._soon is not None and self._soon_loop is loop:
            return  # (a handle left on a loop that stopped before it ran is not waited for)
        self._soon_loop = loop

        def run() -> None:
            self._soon = None
            try:
                pump()
            finally:
                self._fresh.clear()

        self._soon = loop.call_soon(run)

    def remember(self, rows: list[TaskRow]) -> None:
        """Rows whose insert has just committed: the next pump takes them as they are
        rather than decoding them back from the store. Good for that pump only: it runs
        at the loop's next turn, before anyone has been told their ids and could act on
        them, and forgets them whether it starts them or not."""
        for row in rows:
            self._fresh[row.id] = dataclasses.replace(row, snap=dataclasses.replace(row.snap))

    def pump(self) -> None:
        """Start queued tasks from the store while there is room for runners."""
        # Finished tasks count until their completion commits (then they are forgotten and
        # the pump runs again), so memory stays bounded by the cap.
        running = sum(
            1
            for lv in self.live.values()
            if (lv.runner is not None and not lv.runner.done()) or lv.machine.terminal
        )
        free = self.runner_cap() - running
        if free <= 0:
            return
        owner = None if self.background else self.owner
        rows = self.store.next_queued(
            background=self.background,
            owner=owner,
            limit=free,
            exclude=self.live.keys(),
            known=self._fresh,
        )
        for row in rows:
            self.admit(row)
        self._arm_wake()

    def _arm_wake(self) -> None:
        """Pump again when the earliest start_at of a queued task comes."""
        wall = time.time()
        at = self.store.next_start(background=self.background, now=wall)
        self.stop()
        if at is not None:
            delay = min(at - wall, WAKE_CAP) + 0.01
            self._wake = asyncio.get_running_loop().call_later(delay, self.wake)

    def stop(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
