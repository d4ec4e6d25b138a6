"""Bandwidth caps and origin cool-downs for an engine: the waiting side of _protocol/_schedule.

Every body byte of a capped transfer is charged to up to three token buckets: the task's own
(``max_rate``), its origin's and the engine's global one. The reader then pauses for the
longest debt, so the strictest cap wins, and a global cap shared by N busy transfers gives
each about 1/N (they all pay into one bucket and pause in turn).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bgtransfer._protocol._schedule import CoolDowns, TokenBucket

__all__ = ["Politeness", "RateLimits", "read_size_for"]

MIN_READ = 16 << 10


def read_size_for(rate: float | None, default: int) -> int:
    """Smaller reads under a cap: one read of 1 MiB at 64 KiB/s would be a 16 s burst."""
    if rate is None:
        return default
    return int(min(default, max(MIN_READ, rate / 10)))


class RateLimits:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.global_rate: int | None = None
        self.origin_rates: dict[str, int] = {}
        self._global: TokenBucket | None = None
        self._origins: dict[str, TokenBucket] = {}
        self._tasks: dict[str, TokenBucket] = {}

    # -- settings --------------------------------------------------------------------------

    def set_global(self, rate: int | None) -> None:
        self.global_rate = rate
        if rate is None:
            self._global = None
        elif self._global is None:
            self._global = TokenBucket.for_rate(rate)
        else:
            self._global.set_rate(rate, self.clock())

    def set_origin(self, origin: str, rate: int | None) -> None:
        if rate is None:
            self.origin_rates.pop(origin, None)
            self._origins.pop(origin, None)
            return
        self.origin_rates[origin] = rate
        bucket = self._origins.get(origin)
        if bucket is None:
            self._origins[origin] = TokenBucket.for_rate(rate)
        else:
            bucket.set_rate(rate, self.clock())

    def settings(self) -> dict[str, Any]:
        return {"global": self.global_rate, "origins": dict(sorted(self.origin_rates.items()))}

    # -- the hot path ----------------------------------------------------------------------

    def cap(self, task_rate: int | None, origin: str) -> float | None:
        """The tightest rate that applies to a transfer now (None: unlimited)."""
        rates = [r for r in (task_rate, self.global_rate, self.origin_rates.get(origin)) if r]
        return min(rates) if rates else None

    def charge(self, task_id: str, task_rate: int | None, origin: str, n: int) -> float:
        """Charge ``n`` bytes; returns the seconds the reader should pause (0: go on)."""
        now = self.clock()
        delay = 0.0
        if task_rate:
            bucket = self._tasks.get(task_id)
            if bucket is None or bucket.rate != task_rate:
                bucket = self._tasks[task_id] = TokenBucket.for_rate(task_rate)
            delay = bucket.take(n, now)
        ob = self._origins.get(origin)
        if ob is not None:
            delay = max(delay, ob.take(n, now))
        if self._global is not None:
            delay = max(delay, self._global.take(n, now))
        return delay

    async def throttle(self, task_id: str, task_rate: int | None, origin: str, n: int) -> None:
        delay = self.charge(task_id, task_rate, origin, n)
        if delay > 0:
            await asyncio.sleep(delay)

    def limited(self, task_rate: int | None, origin: str) -> bool:
        return bool(task_rate or self._global is not None or origin in self._origins)

    def forget(self, task_id: str) -> None:
        self._tasks.pop(task_id, None)


class Politeness:
    """Origin cool-downs on the engine's monotonic clock, with wall-clock times for people."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rules = CoolDowns()
        # Tasks a person resumed: their next attempt goes at once (as it did before
        # cool-downs existed); every other task still waits.
        self.exempt: set[str] = set()

    def on_response(self, origin: str, status: int, retry_after: float | None) -> float | None:
        """Record an answer; returns the wall time the origin may be asked again when this
        answer started or extended a cool-down."""
        now = self.clock()
        until = self.rules.on_response(origin, status, retry_after, now)
        return None if until is None else time.time() + (until - now)

    def restore(self, origin: str, wall_until: float, reason: str) -> None:
        now = self.clock()
        self.rules.restore(origin, now + (wall_until - time.time()), reason)

    def wait_needed(self, origin: str) -> float:
        """Seconds until the origin may be asked again (0.0: now)."""
        now = self.clock()
        until = self.rules.not_before(origin, now)
        return max(0.0, until - now) if until else 0.0

    def detail(self, origin: str, wait: float) -> str:
        at = time.strftime("%H:%M:%S", time.localtime(time.time() + wait))
        why = self.rules.reason(origin)
        return f"origin asked to wait until {at} ({why} from {origin})"

    def snapshot(self) -> dict[str, float]:
        """Origins cooling down now, with the wall time they may be asked again."""
        now, wall = self.clock(), time.time()
        return {o: wall + (c.until - now) for o, c in self.rules.origins.items() if c.until > now}
