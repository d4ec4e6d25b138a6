"""Background fetch jobs in fleet mode: every live worker fires the due ones; each
occurrence fires once across the fleet (``_store._pgjobs``: ``FOR UPDATE SKIP LOCKED`` on
the due jobs; the run's task, its history row and the job's next time in one transaction).

No worker is "the scheduler": each one sleeps until the earliest due job (or until a job is
scheduled: ``LISTEN bgtransfer_jobs``), then tries to fire; the first to lock a job fires it,
the others skip it. A worker that dies changes nothing: the others fire the next
occurrences, and after a fleet-wide downtime a job runs once to catch up, then keeps its
grid, as in the daemon. The run is an ordinary queued task: any worker claims it.

The loop has a store connection and a thread of its own (and its own LISTEN connection), so
a file-system call that hangs while a run is built (a shared volume gone) never delays the
worker's lease renewals.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from bgtransfer._exceptions import StoreError, StoreUnavailable
from bgtransfer._jobspec import run_row
from bgtransfer._store._pgcontrol import AsyncEventListener
from bgtransfer._store._pgjobs import FIRE_BATCH, JOBS_CHANNEL
from bgtransfer._store._postgres import PostgresStore

__all__ = ["CAP", "LEFT_FOR", "JobFiring"]

log = logging.getLogger("bgtransfer.fleet.jobs")

T = TypeVar("T")

# The longest sleep between looks: a wall-clock step (NTP, suspend) or a notification lost
# while the listener reconnected is noticed within this.
CAP = 60.0
LEFT_FOR = 60.0  # seconds a worker that cannot make a job's run leaves that job to others
RETRY = 2.0  # seconds before trying again when the store did not answer


class JobFiring:
    """``await JobFiring(url).run()``: fire due jobs until cancelled."""

    def __init__(self, url: str, *, rng: Callable[[], float] = random.random) -> None:
        self.url = url
        self.rng = rng
        self.left: dict[str, float] = {}  # job id -> until when this worker leaves it
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bgt-jobs")
        self._db: PostgresStore | None = None

    async def _call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kw))

    async def run(self) -> None:
        listener = AsyncEventListener(self.url, (JOBS_CHANNEL,))
        listening = False
        try:
            while True:
                if not listening:
                    try:
                        await listener.open()  # before the look: nothing falls between
                        listening = True
                    except StoreUnavailable as exc:
                        log.warning("background fetch jobs: %s", exc.message)
                try:
                    delay = await self.tick()
                except Exception:  # a bug must not stop this worker's jobs for good
                    log.exception("background fetch jobs: firing failed")
                    delay = RETRY
                if not listening:
                    await asyncio.sleep(min(delay, RETRY))
                    continue
                try:
                    await listener.wait(delay)
                except StoreUnavailable as exc:
                    log.warning("background fetch jobs: %s; listening again", exc.message)
                    await listener.close()
                    listening = False
        finally:
            await listener.close()
            db, self._db = self._db, None
            if db is not None:
                with contextlib.suppress(StoreError):
                    await self._call(db.close)
            self._pool.shutdown(wait=False)

    async def tick(self) -> float:
        """Fire what is due; the seconds until the next look."""
        try:
            if self._db is None:
                self._db = await self._call(PostgresStore, self.url)
            while True:
                now = time.time()
                self.left = {j: t for j, t in self.left.items() if t > now}
                fired = await self._call(
                    self._db.fire_due, run_row, now=now, rng=self.rng, exclude=list(self.left)
                )
                for f in fired:
                    if f.task_id is not None:
                        log.info("job %s: run %s started", f.job_id, f.task_id)
                    elif f.left:
                        log.warning("job %s: left to another worker: %s", f.job_id, f.note)
                        self.left[f.job_id] = now + LEFT_FOR
                    else:
                        log.info("job %s: %s", f.job_id, f.note)
                if len(fired) < FIRE_BATCH:
                    break
            nxt = await self._call(self._db.next_job_due, list(self.left))
        except StoreError as exc:
            log.warning("background fetch jobs: %s", exc.message)
            return RETRY
        wake: list[float] = list(self.left.values())
        if nxt is not None:
            wake.append(nxt)
        # 5 ms past the due time: a look at exactly next_run would find it not due yet.
        left = [max(t - time.time(), 0.0) + 0.005 for t in wake]
        return min([CAP, *left])
