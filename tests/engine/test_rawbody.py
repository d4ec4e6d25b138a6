"""The raw-socket fast path for big plain-HTTP bodies (``_engine/_rawbody.py``).

Bodies of at least MIN_RAW_BYTES with a Content-Length are read straight off the socket after
aiohttp has parsed the headers. The same faults as the main matrix, on bodies that take that
path: every byte that arrived is kept, resumes are exact, timeouts and the watchdog still fire.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import bgtransfer
from bgtransfer import TaskState, TransferTimeout
from bgtransfer._engine._rawbody import MIN_RAW_BYTES
from bgtransfer.testing import FaultServer, RequestRecord, gen_bytes, gen_sha256

FAST: dict[str, Any] = {"retry_wait": 0.05, "max_retry_wait": 0.2}
BIG = MIN_RAW_BYTES + (4 << 20) + 12345  # not a multiple of the read size
CUT = MIN_RAW_BYTES + 777


def by_key(server: FaultServer, key: str) -> list[RequestRecord]:
    return [r for r in server.requests("/gen/") if r.query.get("key") == key]


def fetch(session: bgtransfer.Session, url: str, dest: Path, **kw: Any) -> bgtransfer.Task:
    return session.download(url, dest, **{**FAST, **kw}).wait(timeout=60)


def test_big_body_is_byte_exact_and_its_connection_is_not_reused(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    big = fetch(session, server.url(f"/gen/{BIG}?seed=21&key={key}"), tmp_path / "big")
    assert big.error is None
    assert (tmp_path / "big").read_bytes() == gen_bytes(BIG, seed=21)
    small_key = key + "s"
    for i in range(2):
        t = fetch(session, server.url(f"/gen/1000?key={small_key}"), tmp_path / f"s{i}")
        assert t.error is None
    (first,) = by_key(server, key)
    s0, s1 = by_key(server, small_key)
    # The socket was taken over and closed after the big body; small bodies keep alive.
    assert s0.connection != first.connection
    assert s1.connection == s0.connection


def test_sha256_is_checked_on_the_fast_path(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    url = server.url(f"/gen/{BIG}?seed=22&key={key}")
    ok = fetch(session, url, tmp_path / "ok", sha256=gen_sha256(BIG, seed=22))
    assert ok.error is None
    bad = fetch(session, url, tmp_path / "bad", sha256="0" * 64)
    assert isinstance(bad.error, bgtransfer.IntegrityError)
    assert not (tmp_path / "bad").exists()


def test_a_cut_or_reset_body_resumes_exactly_where_it_stopped(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    for fault in ("cut", "rst"):
        k = f"{key}{fault}"
        dest = tmp_path / fault
        task = fetch(session, server.url(f"/gen/{BIG}?seed=23&{fault}={CUT}&times=1&key={k}"), dest)
        assert task.state is TaskState.COMPLETED
        assert task.error is None, task.error
        assert dest.read_bytes() == gen_bytes(BIG, seed=23)
        first, second = by_key(server, k)
        assert first.range is None
        # Every byte that arrived before the cut was written and counted: none fetched twice.
        assert second.range == f"bytes={CUT}-"
        assert second.if_range is not None


def test_a_stall_mid_body_hits_the_idle_timeout_and_resumes(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "stall"
    url = server.url(f"/gen/{BIG}?seed=24&stall_body={CUT}&stall=3&times=1&key={key}")
    task = fetch(session, url, dest, request_timeout=0.5)
    assert task.error is None, task.error
    assert dest.read_bytes() == gen_bytes(BIG, seed=24)
    _, second = by_key(server, key)
    assert second.range == f"bytes={CUT}-"
    (attempt, _) = task.history()
    assert "no data for 0.5 s" in attempt["outcome"]


def test_the_low_speed_watchdog_cuts_a_trickling_fast_path_body(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "slow"
    # Fast to the stall, then nothing (within the idle timeout) for longer than the window.
    url = server.url(f"/gen/{BIG}?seed=25&stall_body={CUT}&stall=4&key={key}")
    task = fetch(
        session, url, dest, request_timeout=30, low_speed_limit=1000, low_speed_time=1.0,
        max_attempts=1,
    )  # fmt: skip
    assert isinstance(task.error, TransferTimeout), task.error
    assert "slower than 1000 B/s" in str(task.error)
    assert not dest.exists()


def test_suspend_mid_body_keeps_every_byte_and_resume_finishes(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "susp"
    url = server.url(f"/gen/{BIG}?seed=26&rate=8000000&key={key}")
    task = session.download(url, dest, **FAST)
    for _ in range(200):  # bounded: up to 10 s
        if task.bytes_received > 2 << 20:
            break
        time.sleep(0.05)
    task.suspend()
    held = task.bytes_received
    assert task.state is TaskState.SUSPENDED
    assert 0 < held < BIG
    task.resume()
    task.wait(timeout=60)
    assert task.error is None
    assert dest.read_bytes() == gen_bytes(BIG, seed=26)
    assert by_key(server, key)[-1].range == f"bytes={held}-"
