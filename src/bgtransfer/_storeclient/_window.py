"""Which live events a stream has still to deliver when cursors commit out of order.

A cursor is taken when a transaction inserts its event, not when it commits: with two
workers committing at once, cursor 12 may become visible before cursor 11. A stream that
read only past the highest cursor it delivered would never see 11. So each read starts at a
low-water mark that trails the delivered cursors by ``lag`` seconds, and the cursors
delivered within that window are skipped when read again. An event still invisible ``lag``
seconds after a later one was delivered (its commit stalled that long) is given up.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["LAG", "Window"]

LAG = 1.0  # seconds a stream keeps looking back for a late commit


class Window:
    def __init__(
        self, start: int, *, lag: float = LAG, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.low = start  # every cursor up to here is delivered or given up
        self.lag, self.clock = lag, clock
        self._recent: deque[tuple[float, int]] = deque()  # (delivered at, cursor)
        self._seen: set[int] = set()

    def fresh(self, cursor: int) -> bool:
        """Whether ``cursor`` is to be delivered now (then it counts as delivered)."""
        if cursor <= self.low or cursor in self._seen:
            return False
        self._seen.add(cursor)
        self._recent.append((self.clock(), cursor))
        return True

    def settle(self) -> int:
        """Move the low-water mark past what was delivered ``lag`` seconds ago; the cursor
        to read from next."""
        now = self.clock()
        while self._recent and now - self._recent[0][0] >= self.lag:
            _, cursor = self._recent.popleft()
            self._seen.discard(cursor)
            self.low = max(self.low, cursor)
        return self.low
