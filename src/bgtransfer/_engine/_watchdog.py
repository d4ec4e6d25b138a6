"""curl's --speed-limit/--speed-time for every driver: idle timeouts alone miss a trickling
server, which sends a byte now and then and never lets a read time out."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from bgtransfer._exceptions import TransferTimeout

__all__ = ["slow_error", "too_slow"]


async def too_slow(
    progress: Callable[[], int],
    limit: int,
    window: float,
    clock: Callable[[], float],
) -> TransferTimeout:
    """Return (with the error to report) once fewer than ``limit`` bytes a second arrived
    over the last ``window`` seconds; runs until cancelled otherwise.

    Polls with the real loop's sleep, not the engine's injectable one: it measures wall
    progress and must not spin when a test makes the engine's waits instant.
    """
    samples: deque[tuple[float, int]] = deque([(clock(), progress())])
    while True:
        await asyncio.sleep(min(0.5, window / 4))
        now, done = clock(), progress()
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= window:
            samples.popleft()
        t0, b0 = samples[0]
        if now - t0 >= window and (done - b0) / (now - t0) < limit:
            return slow_error(limit, window)


def slow_error(limit: int, window: float) -> TransferTimeout:
    return TransferTimeout(f"slower than {limit} B/s for {window:g} s")
