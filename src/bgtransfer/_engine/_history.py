"""The request history of each task (``bgtransfer history``): one record per request, on
record while it runs ("in progress") and updated when it ends.

Every attempt record the engine writes is made, ended and handed to the committer here, so
the shape of a record (a store Attempt) is one module's business.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from bgtransfer._engine._commit import Committer, Save
from bgtransfer._engine._live import Live
from bgtransfer._protocol._signed import redact_signature
from bgtransfer._store._base import Attempt

__all__ = ["History", "ignore"]

REDIRECTS = (301, 302, 303, 307, 308)


class History:
    def __init__(self, *, background: bool) -> None:
        self.background = background
        self.commit: Committer | None = None  # set once the engine starts
        self.closed = False  # the engine is closing: ended requests say "interrupted"

    def open(self, live: Live, url: str, range_start: int | None) -> Attempt:
        """A request that starts: on record (outcome "in progress") with the next commit,
        whatever becomes of the process; the row is updated when it ends."""
        # Signed URLs are bearer secrets until they expire: never on record (issue 17).
        attempt = Attempt(time.time(), redact_signature(url), range_start, key=os.urandom(8).hex())
        if self.commit is not None and not self.closed:
            # No await: the request is not held up for it (a crash in the next few
            # milliseconds may leave it unlisted); the writer merges it with the task's
            # other saves. Synced first like any commit of the task (segments still write),
            # so no commit ever lands while its file has unsynced bytes.
            live.part.sync()
            fut = self.commit.submit(
                Save(live.row.id, None, time.time(), attempts=[attempt.copy()])
            )
            fut.add_done_callback(ignore)
        return attempt

    def end(self, live: Live) -> None:
        """Record the task's request in flight as finished: what it asked, what came back,
        what was decided."""
        attempt, live.attempt = live.attempt, None
        if attempt is None:
            return
        status = attempt.status
        detail = live.machine.snap.detail
        if status in REDIRECTS and not detail.startswith("failed"):
            outcome = "redirected"
        elif detail in ("connecting", "downloading", "verifying") or detail.startswith(
            ("downloading", "resuming")
        ):
            outcome = "body complete" if status and status < 300 else detail
        else:
            outcome = detail
        if self.closed:
            outcome = "interrupted: " + (
                "the daemon stopped" if self.background else "the session was closed"
            )
        self.close(live, attempt, outcome)

    def close(self, live: Live, attempt: Attempt, outcome: str) -> None:
        """End one record with ``outcome``. It is written with the task's next snapshot, in
        the same transaction: every path that ends an attempt persists soon after (retry,
        finish, suspend, fail), or calls :meth:`save`."""
        attempt.ended_at = time.time()
        attempt.outcome = outcome
        live.attempts_done.append(attempt)

    def take_ended(self, live: Live) -> list[Attempt]:
        """The ended records, for a save that carries them."""
        attempts, live.attempts_done = live.attempts_done, []
        return attempts

    def for_snapshot(self, live: Live) -> list[Attempt]:
        """What a snapshot carries: the ended records and the one in flight, bytes so far."""
        attempts = self.take_ended(live)
        if live.attempt is not None:
            attempts.append(live.attempt.copy())
        return attempts

    def save(self, live: Live) -> None:
        """Ended records that no snapshot is about to carry: on record by themselves."""
        attempts = self.take_ended(live)
        if attempts and self.commit is not None and not self.closed:
            fut = self.commit.submit(Save(live.row.id, None, time.time(), attempts=attempts))
            fut.add_done_callback(ignore)


def ignore(fut: asyncio.Future[Any]) -> None:
    """Retrieve a future's outcome nobody waits for (the committer logged a failure)."""
    if not fut.cancelled():
        fut.exception()
