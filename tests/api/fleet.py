"""What the fleet-client tests share: a stand-in for a worker, acting on the PostgreSQL store
as a worker does (claim, fetch from the real test server, commit under its fencing token),
until the worker runtime of issue 16 drives these tests itself."""

from __future__ import annotations

import dataclasses
import os
import time
import urllib.request

from bgtransfer._models import Phase
from bgtransfer._store._postgres import Claim, PostgresStore

__all__ = ["claim_one", "complete", "fetch_and_complete"]


def claim_one(store: PostgresStore, worker: str = "w1", lease_s: float = 30.0) -> Claim:
    """Claim the next queued task, as a worker's claim loop does."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = store.claim(worker, lease_s)
        if got:
            return got[0]
        time.sleep(0.05)
    raise AssertionError("nothing to claim within 10 s")


def complete(store: PostgresStore, claim: Claim, *, size: int, detail: str = "done") -> None:
    """Commit the task's completion under the claim's token, then give the task back."""
    snap = dataclasses.replace(
        claim.row.snap, phase=Phase.DONE, detail=detail, offset=size, total=size, status_code=200
    )
    store.save(
        claim.row.id, snap, wall_time=time.time(), event=(claim.row.session, "completed"),
        fence=claim.token,
    )  # fmt: skip
    store.release(claim.row.id, claim.token)


def fetch_and_complete(store: PostgresStore, claim: Claim, *, delay: float = 0.0) -> None:
    """After ``delay`` seconds, download the task's URL (the real test server) into its
    path, then complete it."""
    time.sleep(delay)
    with urllib.request.urlopen(claim.row.spec.url, timeout=10) as resp:
        data = resp.read()
    tmp = claim.row.path + ".part-test"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, claim.row.path)
    complete(store, claim, size=len(data))
