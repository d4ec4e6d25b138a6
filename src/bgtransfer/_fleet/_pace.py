"""A worker's side of fleet-wide pacing: origin cool-downs and bandwidth caps that hold
across every worker, not per process.

Cool-downs: a 429/503 with Retry-After heard by any worker is stored (the later ``until``
wins) and announced (``NOTIFY bgtransfer_cooldown``); every worker then waits it out before
its next request to that origin (its engine's politeness rule), and no worker claims that
origin's queued tasks until then (the claim query skips it). When it ends, the claim loop
is woken.

Caps (``bgtransfer limit``): the fleet's total stays within each cap. A worker's share of
a cap is the cap times its part of the live leases under it (every lease for the global cap,
the origin's for an origin's cap); shares are recomputed on every change of a cap (``NOTIFY
bgtransfer_limits``), after every claim of this worker (announced: the others shrink theirs
within a tenth of a second), and at every lease renewal (a third of the lease) as the
fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bgtransfer._engine._engine import Engine
from bgtransfer._exceptions import StoreError
from bgtransfer._store._postgres import PostgresStore

__all__ = ["FleetPace", "share"]

log = logging.getLogger("bgtransfer.fleet")

Counts = dict[tuple[str, str | None], int]
MIN_GAP = 0.1  # seconds: announcements within it are served by one refresh


def share(cap: int, mine: int, total: int) -> int:
    """This worker's part of ``cap`` when it holds ``mine`` of the ``total`` live tasks
    under it. A worker holding none gets what one more task would (a placeholder: it is
    recomputed as soon as it claims one, before that task runs)."""
    if mine <= 0:
        return max(1, cap // (total + 1))
    return max(1, cap * mine // max(total, mine))


def shares(
    caps: tuple[int | None, dict[str, int]], counts: Counts, me: str
) -> tuple[int | None, dict[str, int]]:
    """The global share and each capped origin's share of worker ``me``."""
    glob, origins = caps
    mine_all = sum(n for (w, _), n in counts.items() if w == me)
    g = None if glob is None else share(glob, mine_all, sum(counts.values()))
    per: dict[str, int] = {}
    for origin, cap in origins.items():
        total = sum(n for (_, o), n in counts.items() if o == origin)
        per[origin] = share(cap, counts.get((me, origin), 0), total)
    return g, per


class FleetPace:
    def __init__(
        self,
        name: str,
        engine: Engine,
        call: Callable[..., Awaitable[Any]],
        store: Callable[[], PostgresStore],
        wake_claims: Callable[[], None],
        wake: asyncio.Event,
    ) -> None:
        self.name = name
        self.engine = engine
        self._call = call
        self._store = store
        self._wake_claims = wake_claims
        self.wake = wake  # set by the listener thread: a cool-down or a cap changed
        self.capped = False  # a cap is set: shares change with every claim
        self._timers: dict[str, asyncio.TimerHandle] = {}

    async def refresh(self, *, claimed: bool = False) -> None:
        """Read the fleet's cool-downs, caps and live leases; apply them to the engine.
        ``claimed``: this worker just claimed tasks (announce it if caps are set)."""
        db = self._store()
        try:
            if claimed and self.capped:
                await self._call(db.announce_limits)
            cool, caps, counts = await self._call(db.pace_facts)
        except StoreError as exc:
            log.warning("cannot read the fleet's cool-downs and caps: %s", exc.message)
            return
        now = time.time()
        for origin, until, reason in cool:
            self.engine.polite.restore(origin, until, reason)  # the later one wins
            self._claim_at(origin, until - now)
        self.capped = caps[0] is not None or bool(caps[1])
        glob, per = shares(caps, counts, self.name)
        rates = self.engine.rates
        if rates.global_rate != glob:
            rates.set_global(glob)
        for origin in set(rates.origin_rates) - set(per):
            rates.set_origin(origin, None)
        for origin, rate in per.items():
            if rates.origin_rates.get(origin) != rate:
                rates.set_origin(origin, rate)

    def _claim_at(self, origin: str, delay: float) -> None:
        """The origin's queued tasks become claimable when it is over: nobody announces
        that, so look then (not a sweep later)."""
        old = self._timers.pop(origin, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[origin] = loop.call_later(max(0.0, delay) + 0.05, self._wake_claims)

    async def run(self, every: float, stopping: Callable[[], bool]) -> None:
        """Refresh on every announcement, and every ``every`` seconds (a notification
        missed while the listener reconnected). Announcements that come while a refresh
        runs, or within :data:`MIN_GAP` after it, are served by one more refresh: a fleet
        that claims hundreds of capped tasks a second costs each worker ten reads a second."""
        while not stopping():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), every)
            await asyncio.sleep(MIN_GAP)
            self.wake.clear()
            if not stopping():
                await self.refresh()

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
