"""The engine's side of pacing: bandwidth caps and origin cool-downs.

The rules themselves are in :mod:`bgtransfer._protocol._schedule`, the buckets in
``_ratelimit``; the engine holds one :class:`Pacing` and every driver pays into it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from bgtransfer._engine._live import Live
from bgtransfer._engine._ratelimit import Politeness, RateLimits, read_size_for
from bgtransfer._models import Phase
from bgtransfer._protocol import _machine as M
from bgtransfer._protocol._origin import origin_key
from bgtransfer._protocol._ranges import parse_retry_after
from bgtransfer._store._base import Store

__all__ = ["READ_SIZE", "Pacing"]

# research/perf.md: 256 KiB-4 MiB reads run alike; smaller loses less on a crash. The read
# size when nothing caps the task.
READ_SIZE = 1 << 20


class Pacing:
    def __init__(
        self,
        store: Store,
        *,
        background: bool,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.store = store
        self.background = background
        self.sleep = sleep
        self.rates = RateLimits(clock)
        self.polite = Politeness(clock)

    def load_limits(self) -> None:
        """Daemon start: the caps set with ``bgtransfer limit`` and the origins that asked
        to wait before the restart (a SIGKILL must not let every task hit them at once)."""
        glob, origins = self.store.limits()
        self.rates.set_global(glob)
        for origin, rate in origins.items():
            self.rates.set_origin(origin, rate)
        for origin, until, reason in self.store.cooldowns(time.time()):
            self.polite.restore(origin, until, reason)

    def set_limit(self, origin: str | None, rate: int | None) -> None:
        """Change the global cap (``origin=None``) or one origin's; durable, effective now."""
        self.store.set_limit(origin, rate)
        if origin is None:
            self.rates.set_global(rate)
        else:
            self.rates.set_origin(origin, rate)

    async def throttle(self, live: Live, n: int) -> None:
        spec = live.machine.spec
        if self.rates.limited(spec.max_rate, live.origin):
            await self.rates.throttle(live.row.id, spec.max_rate, live.origin, n)

    def read_size(self, live: Live) -> int:
        return read_size_for(self.rates.cap(live.machine.spec.max_rate, live.origin), READ_SIZE)

    def heard(self, url: str, status: int, headers: dict[str, str]) -> None:
        """Every answer feeds the origin's cool-down rule (429/503 + Retry-After)."""
        retry_after = parse_retry_after(headers.get("retry-after"), time.time())
        origin = origin_key(url)
        until = self.polite.on_response(origin, status, retry_after)
        if until is not None and self.background:
            # Rare (a 429/503): a direct commit, so a restarted daemon keeps waiting.
            self.store.save_cooldown(
                origin, until, self.polite.rules.reason(origin), now=time.time()
            )

    async def wait_origin(self, origin: str) -> None:
        """A new connection is a new request: it waits out the origin's cool-down too."""
        for _ in range(100):
            wait = self.polite.wait_needed(origin)
            if wait <= 0:
                return
            await self.sleep(wait)

    async def cool_down(self, live: Live, apply: Callable[[Live, M.Event], None]) -> None:
        """No new request to an origin that asked to wait; ``ls`` says until when."""
        m = live.machine
        if live.row.id in self.polite.exempt:
            self.polite.exempt.discard(live.row.id)
            return
        for _ in range(1000):  # each pass waits; an origin may extend its wait
            wait = self.polite.wait_needed(live.origin)
            if wait <= 0 or m.snap.phase is not Phase.QUEUED:
                return
            detail = self.polite.detail(live.origin, wait)
            if m.snap.detail != detail:
                apply(live, M.Waiting(detail))
            await self.sleep(wait)
