"""The engine's side of scheduling: start-time wake-ups, bandwidth caps, origin cool-downs.

Mixed into :class:`Engine` (kept apart so the engine module stays about transfers); the rules
themselves are in :mod:`bgtransfer._protocol._schedule`, the buckets in ``_ratelimit``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bgtransfer._engine._ratelimit import Politeness, RateLimits, read_size_for
from bgtransfer._models import Phase
from bgtransfer._protocol import _machine as M
from bgtransfer._protocol._origin import origin_key
from bgtransfer._protocol._ranges import parse_retry_after
from bgtransfer._store._sqlite import SQLiteStore

if TYPE_CHECKING:
    from bgtransfer._engine._engine import _Live

__all__ = ["Pacing"]

READ_SIZE = 1 << 20  # _engine.READ_SIZE (a test pins them equal): reads when nothing caps


class Pacing:
    store: SQLiteStore
    background: bool
    rates: RateLimits
    polite: Politeness
    _wake: asyncio.TimerHandle | None
    clock: Callable[[], float]

    if TYPE_CHECKING:  # the Engine's

        def _pump(self) -> None: ...

        def _apply_now(self, live: _Live, event: M.Event) -> None: ...

    def _load_limits(self) -> None:
        """Daemon start: the caps set with ``bgtransfer limit`` and the origins that asked
        to wait before the restart (a SIGKILL must not let every task hit them at once)."""
        glob, origins = self.store.limits()
        self.rates.set_global(glob)
        for origin, rate in origins.items():
            self.rates.set_origin(origin, rate)
        for origin, until, reason in self.store.cooldowns(time.time()):
            self.polite.restore(origin, until, reason)

    def _arm_wake(self) -> None:
        """Pump again when the earliest start_at of a queued task comes."""
        wall = time.time()
        at = self.store.next_start(background=self.background, now=wall)
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        if at is not None:
            # Capped, so a clock step (suspend, NTP) is noticed within a minute.
            delay = min(at - wall, 60.0) + 0.01
            self._wake = asyncio.get_running_loop().call_later(delay, self._pump)

    def set_limit(self, origin: str | None, rate: int | None) -> None:
        """Change the global cap (``origin=None``) or one origin's; durable, effective now."""
        self.store.set_limit(origin, rate)
        if origin is None:
            self.rates.set_global(rate)
        else:
            self.rates.set_origin(origin, rate)

    async def _throttle(self, live: _Live, n: int) -> None:
        spec = live.machine.spec
        if self.rates.limited(spec.max_rate, live.origin):
            await self.rates.throttle(live.row.id, spec.max_rate, live.origin, n)

    def _read_size(self, live: _Live) -> int:
        return read_size_for(self.rates.cap(live.machine.spec.max_rate, live.origin), READ_SIZE)

    def _heard(self, url: str, status: int, headers: dict[str, str]) -> None:
        """Every answer feeds the origin's cool-down rule (429/503 + Retry-After)."""
        retry_after = parse_retry_after(headers.get("retry-after"), time.time())
        origin = origin_key(url)
        until = self.polite.on_response(origin, status, retry_after)
        if until is not None and self.background:
            # Rare (a 429/503): a direct commit, so a restarted daemon keeps waiting.
            self.store.save_cooldown(
                origin, until, self.polite.rules.reason(origin), now=time.time()
            )

    async def _cool_down(self, live: _Live) -> None:
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
                self._apply_now(live, M.Waiting(detail))
            await asyncio.sleep(wait)
