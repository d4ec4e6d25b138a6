"""Retry and backoff on the engine's injected sleep and clock: waits of seconds or minutes
cost no wall time, the server and the files are real.

Each test would fail with the engine's own ``asyncio.sleep`` (its bounded wait runs out
long before the backoff does) or checks the exact delays the engine asked for.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from bgtransfer import TransferTimeout
from bgtransfer._models import Phase
from bgtransfer._store._base import TaskRow
from bgtransfer._tasks import build_row, build_upload_row
from bgtransfer.testing import FaultServer, gen_bytes

from ._virtual import VirtualTime, run_engine

MiB = 1 << 20
SIZE = 300_000


def test_a_backoff_of_minutes_takes_no_wall_time(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    vt = VirtualTime()
    url = server.url(f"/gen/{SIZE}?status=500&times=2&key={key}")
    dest = tmp_path / "d.bin"

    def build() -> TaskRow:
        return build_row("vt", url, dest, background=False, retry_wait=60.0, max_retry_wait=600.0)

    row = asyncio.run(run_engine(tmp_path / "home", vt, build, timeout=30)).row
    assert row.snap.error is None, row.snap.error
    assert row.snap.phase is Phase.DONE
    assert dest.read_bytes() == gen_bytes(SIZE)
    # Equal jitter: the n-th delay is in [base * 2^(n-1) / 2, base * 2^(n-1)].
    assert len(vt.slept) == 2, vt.slept
    assert 30.0 <= vt.slept[0] <= 60.0
    assert 60.0 <= vt.slept[1] <= 120.0
    mine = [r for r in server.requests(f"/gen/{SIZE}") if r.query.get("key") == key]
    assert len(mine) == 3


def test_put_answered_500_backs_off(server: FaultServer, tmp_path: Path, key: str) -> None:
    """(Was real time in test_servers_say.) The resource timeout counts virtual seconds."""
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(256 << 10))
    name = f"b500-{key}"
    vt = VirtualTime()

    def build() -> TaskRow:
        return build_upload_row(
            "up",
            src,
            server.url(f"/upload/{name}?status=500"),
            background=False,
            retry_wait=0.1,
            resource_timeout=6.0,
        )

    row = asyncio.run(run_engine(tmp_path / "home", vt, build, timeout=30)).row
    assert isinstance(row.snap.error, TransferTimeout), row.snap.error
    puts = [r for r in server.requests(f"/upload/{name}") if r.method == "PUT"]
    # 0.1 s doubling (equal jitter) fits 6-8 tries in 6 s; with the backoff reset by the
    # sent body it was one every 0.05-0.1 s (60 or more).
    assert 4 <= len(puts) <= 10, len(puts)
    assert len(vt.slept) in (len(puts) - 1, len(puts)), (vt.slept, len(puts))
    assert vt.slept[-1] > 4 * vt.slept[0], vt.slept
    assert all(b >= a for a, b in zip(vt.slept, vt.slept[1:], strict=False)), vt.slept


def test_a_206_of_a_new_version_restarts_segments(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    """(Was real time in test_servers_say, where the new version had to be put in place
    within the 0.5-1 s retry wait.) The version changes inside the first retry's sleep,
    so every retry after it meets version 2."""
    size = 8 * MiB
    v1, v2 = os.urandom(size), os.urandom(size)
    name = f"seg-{key}"
    url = server.add(name, v1) + "?ignore_if_range=1&cut=600000&times=4"
    dest = tmp_path / "s.bin"
    swapped: list[float] = []

    def swap(delay: float) -> None:
        if not swapped:
            server.replace(name, v2)
            swapped.append(delay)

    vt = VirtualTime(on_sleep=swap)

    def build() -> TaskRow:
        return build_row(
            "irs",
            url,
            dest,
            background=False,
            segments=4,
            retry_wait=1.0,
            max_retry_wait=2.0,
        )

    row = asyncio.run(run_engine(tmp_path / "home", vt, build, timeout=60)).row
    assert row.snap.error is None, row.snap.error
    assert swapped, "no retry slept"
    assert dest.read_bytes() == v2
    assert row.snap.restarts >= 1


def test_cool_down_of_a_429_waits_on_the_injected_sleep(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Retry-After: 120 on a 429: the origin's cool-down is slept through, not waited out."""
    vt = VirtualTime()
    url = server.url(f"/gen/{SIZE}?status=429&times=1&retry_after=120&key={key}")
    dest = tmp_path / "c.bin"

    def build() -> TaskRow:
        return build_row("cd", url, dest, background=False, retry_wait=0.05)

    row = asyncio.run(run_engine(tmp_path / "home", vt, build, timeout=30)).row
    assert row.snap.error is None, row.snap.error
    assert dest.read_bytes() == gen_bytes(SIZE)
    assert max(vt.slept) >= 100.0, vt.slept
