"""Segmented downloads (issue #7) against the real engine, the real fault server and real files.

The request log is the witness: how many ranged requests, from which byte, with which
If-Range. The per-request history proves how many bytes each connection fetched.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer import TaskState
from bgtransfer._tasks import task_dict
from bgtransfer.testing import FaultServer, RequestRecord, gen_bytes, gen_sha256

FAST: dict[str, Any] = {"retry_wait": 0.05, "max_retry_wait": 0.2}
CHILD = str(Path(__file__).with_name("_child.py"))


def by_key(server: FaultServer, key: str) -> list[RequestRecord]:
    return [r for r in server.requests() if r.query.get("key") == key]


def partials(dest: Path) -> list[str]:
    return [p for p in os.listdir(dest.parent) if p.startswith(f".{dest.name}.")]


def fetch(session: bgtransfer.Session, url: str, dest: Path, **kw: Any) -> bgtransfer.Task:
    return session.download(url, dest, **{**FAST, **kw}).wait(timeout=60)


def assert_ok(task: bgtransfer.Task, dest: Path, expected: bytes) -> None:
    assert task.state is TaskState.COMPLETED
    assert task.error is None, task.error
    assert dest.read_bytes() == expected
    assert partials(dest) == []


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cond(), "condition not reached in time"


def test_four_segments_open_four_ranged_connections_and_end_byte_exact(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 8 << 20
    dest = tmp_path / "four.bin"
    url = server.url(f"/gen/{size}?rate=4000000&key={key}")
    task = fetch(session, url, dest, segments=4, sha256=gen_sha256(size))
    assert_ok(task, dest, gen_bytes(size))
    log = by_key(server, key)
    assert len(log) == 4
    assert log[0].range is None  # the first request is the normal one
    quarter = size // 4
    ranged = sorted((r.range or "" for r in log[1:]), key=lambda v: int(v[6:].split("-")[0]))
    assert ranged == [f"bytes={i * quarter}-{(i + 1) * quarter - 1}" for i in (1, 2, 3)]
    etag = f'"gen-{size}-0-v0"'
    assert all(r.headers.get("if-range") == etag for r in log[1:])
    assert len({r.connection for r in log}) == 4  # four connections, open at once
    hist = task.history()
    assert sum(h["bytes"] for h in hist) == size  # nothing fetched twice
    assert sorted(h["range_start"] or 0 for h in hist) == [0, quarter, 2 * quarter, 3 * quarter]
    row = session._async._engine_or_raise().get(task.id)
    assert task_dict(row)["segments"] == 4
    assert row.snap.segments == tuple((i * quarter, (i + 1) * quarter, (i + 1) * quarter)
                                      for i in range(4))  # fmt: skip


def test_segments_run_in_parallel(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size, rate = 8 << 20, 2_000_000
    dest = tmp_path / "fast.bin"
    t0 = time.monotonic()
    task = fetch(session, server.url(f"/gen/{size}?rate={rate}&key={key}"), dest, segments=4)
    took = time.monotonic() - t0
    assert_ok(task, dest, gen_bytes(size))
    assert took < size / rate * 0.5, (
        f"4 segments took {took:.2f} s, one connection {size / rate:.2f} s"
    )


@pytest.mark.parametrize(
    ("knobs", "size"),
    [
        ("no_accept_ranges=1", 4 << 20),
        ("no_etag=1&no_last_modified=1", 4 << 20),
        ("weak_etag=1&no_last_modified=1", 4 << 20),
        ("chunked=1", 4 << 20),
        ("", 1 << 20),  # too small to split
    ],
)
def test_falls_back_to_one_connection(
    session: bgtransfer.Session,
    server: FaultServer,
    tmp_path: Path,
    key: str,
    knobs: str,
    size: int,
) -> None:
    dest = tmp_path / "one.bin"
    task = fetch(session, server.url(f"/gen/{size}?{knobs}&key={key}"), dest, segments=4)
    assert_ok(task, dest, gen_bytes(size))
    log = by_key(server, key)
    assert [r.range for r in log] == [None]
    assert session._async._engine_or_raise().get(task.id).snap.segments == ()


def test_a_cut_segment_resumes_alone_and_nothing_is_fetched_twice(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 8 << 20
    dest = tmp_path / "cut.bin"
    # The first two requests (connection 0 and one ranged segment) are cut after 300 000 bytes.
    url = server.url(f"/gen/{size}?cut=300000&times=2&rate=4000000&key={key}")
    task = fetch(session, url, dest, segments=4)
    assert_ok(task, dest, gen_bytes(size))
    log = by_key(server, key)
    assert len(log) == 6  # 4 segments + one retry for each cut one
    starts = [int(r.range[6:].split("-")[0]) for r in log[4:] if r.range]
    assert len(starts) == 2
    assert all(s % (size // 4) == 300000 for s in starts)  # each from where it was cut
    assert sum(h["bytes"] for h in task.history()) == size
    assert task.restarts == 0


def test_a_reset_segment_resumes_alone(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 8 << 20
    dest = tmp_path / "rst.bin"
    url = server.url(f"/gen/{size}?rst=500000&times=1&rate=4000000&key={key}")
    task = fetch(session, url, dest, segments=4)
    assert_ok(task, dest, gen_bytes(size))
    log = by_key(server, key)
    assert len(log) == 5
    last = log[-1].range
    assert last is not None
    assert 0 < int(last[6:].split("-")[0]) <= 500000  # segment 0 again, from its position
    assert last.endswith(f"-{size // 4 - 1}")
    assert sum(h["bytes"] for h in task.history()) <= size + 500000


def test_changed_resource_restarts_the_whole_file_and_never_mixes_versions(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 16 << 20
    old, new = gen_bytes(size, seed=1), gen_bytes(size, seed=2)
    name = f"chg-{key}"
    url = server.add(name, old) + f"?cut=2000000&times=1&rate=2000000&key={key}"
    dest = tmp_path / "chg.bin"
    task = session.download(url, dest, segments=4, **FAST)
    wait_for(lambda: task.bytes_received > 500_000)
    server.replace(name, new)  # before connection 0 is cut at 2 MB: its resume gets a 200
    task.wait(timeout=60)
    assert_ok(task, dest, new)
    assert task.restarts == 1
    assert "resource changed" in "".join(h["outcome"] for h in task.history())


def test_lying_content_range_restarts_on_one_connection(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 4 << 20
    dest = tmp_path / "lie.bin"
    task = fetch(session, server.url(f"/gen/{size}?wrong_range=1000&key={key}"), dest, segments=4)
    assert_ok(task, dest, gen_bytes(size))
    assert task.restarts == 1
    log = by_key(server, key)
    assert log[-1].range is None  # the restart is one plain request
    assert "does not match" in " ".join(h["outcome"] for h in task.history())


def test_suspend_stops_every_connection_and_resume_continues_each_segment(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 8 << 20
    dest = tmp_path / "sus.bin"
    task = session.download(
        server.url(f"/gen/{size}?rate=2000000&key={key}"), dest, segments=4, **FAST
    )
    wait_for(lambda: task.bytes_received > 1_000_000)
    t0 = time.monotonic()
    task.suspend()
    assert time.monotonic() - t0 < 1.0
    assert task.state is TaskState.SUSPENDED
    engine = session._async._engine_or_raise()
    held = engine.get(task.id).snap.segments
    assert len(held) == 4
    assert all(start < pos < end for start, pos, end in held)
    n = len(by_key(server, key))
    time.sleep(0.3)
    assert engine.get(task.id).snap.segments == held
    assert len(by_key(server, key)) == n
    task.resume()
    task.wait(timeout=30)
    assert_ok(task, dest, gen_bytes(size))
    resumed = sorted(r.range or "" for r in by_key(server, key)[n:])
    assert resumed == sorted(f"bytes={pos}-{end - 1}" for _, pos, end in held)


def test_cancel_stops_the_connections_and_removes_the_partial(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 8 << 20
    dest = tmp_path / "can.bin"
    task = session.download(
        server.url(f"/gen/{size}?rate=1000000&key={key}"), dest, segments=4, **FAST
    )
    wait_for(lambda: task.bytes_received > 500_000)
    task.cancel()
    assert isinstance(task.error, bgtransfer.Cancelled)
    assert not dest.exists()
    assert partials(dest) == []
    n = len(by_key(server, key))
    time.sleep(0.3)
    assert len(by_key(server, key)) == n
    assert partials(dest) == []


def test_sha256_mismatch_is_caught_by_hashing_the_file(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 4 << 20
    dest = tmp_path / "bad.bin"
    task = fetch(session, server.url(f"/gen/{size}?key={key}"), dest, segments=4, sha256="0" * 64)
    assert isinstance(task.error, bgtransfer.IntegrityError)
    assert not dest.exists()
    assert partials(dest) == []


@pytest.mark.parametrize("bad", [0, 17, -1, "4", 2.0, True, None])
def test_invalid_segments_are_rejected(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, bad: object
) -> None:
    with pytest.raises(bgtransfer.InvalidRequest, match="segments must be an integer from 1 to 16"):
        session.download(server.url("/gen/10"), tmp_path / "x", segments=bad)  # type: ignore[arg-type]
    assert session.tasks() == []


def test_async_session_takes_segments(server: FaultServer, tmp_path: Path, key: str) -> None:
    import asyncio

    size = 4 << 20

    async def go() -> BaseException | None:
        async with bgtransfer.AsyncSession("a", home=tmp_path / "h", background=False) as s:
            t = await s.download(server.url(f"/gen/{size}?key={key}"), tmp_path / "a", segments=2)
            await t.wait(timeout=30)
            return t.error

    assert asyncio.run(go()) is None
    assert (tmp_path / "a").read_bytes() == gen_bytes(size)
    assert [r.range is None for r in by_key(server, key)][:2] == [True, False]


def test_a_free_connection_takes_over_half_of_a_slow_segment(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 16 << 20
    dest = tmp_path / "steal.bin"
    # Connection 0 pauses after 100 000 bytes; the other three finish and one takes over
    # the second half of segment 0 (aria2's split of the largest remaining segment).
    url = server.url(f"/gen/{size}?stall_body=100000&stall=1.5&times=1&key={key}")
    task = fetch(session, url, dest, segments=4)
    assert_ok(task, dest, gen_bytes(size))
    log = by_key(server, key)
    quarter = size // 4
    # The first GET has no Range and serves segment 0; then one request per other segment.
    plan = [f"bytes={i * quarter}-{(i + 1) * quarter - 1}" for i in range(1, 4)]
    assert log[0].range is None
    assert sorted(r.range or "" for r in log[1:4]) == sorted(plan)
    mid = 100000 + (quarter - 100000) // 2
    takeover = [r for r in log[4:] if r.range == f"bytes={mid}-{quarter - 1}"]
    assert len(takeover) == 1, [r.range for r in log]
    # On a loaded machine one of segments 1-3 may start late and be split too (it then has
    # the most left): any other request is such a split, the tail of one planned segment.
    for r in log[4:]:
        if r is takeover[0]:
            continue
        first, last = (int(x) for x in (r.range or "").removeprefix("bytes=").split("-"))
        seg = first // quarter
        assert seg in (1, 2, 3), r.range
        assert last == (seg + 1) * quarter - 1, r.range
        assert first > seg * quarter, r.range
    assert sum(h["bytes"] for h in task.history()) == size


def stored_segments(home: Path) -> tuple[str, int, list[list[int]], str] | None:
    db = home / "bgtransfer.sqlite3"
    if not db.exists():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute('SELECT phase, "offset", response, partial FROM tasks').fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()
    if row is None or row[2] is None:
        return None
    return row[0], row[1], json.loads(row[2]).get("segments", []), row[3]


def test_sigkill_then_resume_continues_each_segment_from_its_commit(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 32 << 20
    origin = gen_bytes(size, seed=5)
    url = server.url(f"/gen/{size}?seed=5&rate=2000000&key={key}")
    home, dest = tmp_path / "home", tmp_path / "out.bin"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, CHILD, str(home), url, str(dest), "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 20
        found = None
        while time.monotonic() < deadline:
            found = stored_segments(home)
            if found and found[2] and all(pos - start > 1_000_000 for start, pos, _ in found[2]):
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    found = stored_segments(home)
    assert found is not None
    phase, offset, segments, partial = found
    assert phase != "done"
    assert len(segments) == 4
    assert offset == sum(pos - start for start, pos, _ in segments)
    data = Path(partial).read_bytes()
    assert len(data) == size
    for start, pos, _ in segments:  # every committed byte is on disk and right
        assert data[start:pos] == origin[start:pos]
    n = len(by_key(server, key))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert "done completed None" in again.stdout, again.stderr
    assert dest.read_bytes() == origin
    assert partials(dest) == []
    resumed = by_key(server, key)[n:]
    starts = sorted(int((r.range or "bytes=-1-")[6:].split("-")[0]) for r in resumed)
    assert starts == sorted(pos for _, pos, end in segments if pos < end)


def test_low_speed_watchdog_covers_all_segments(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 4 << 20
    dest = tmp_path / "slow.bin"
    url = server.url(f"/gen/{size}?trickle=1000&interval=0.05&key={key}")
    t0 = time.monotonic()
    task = fetch(
        session, url, dest, segments=4, low_speed_limit=1_000_000, low_speed_time=0.5,
        max_attempts=2,
    )  # fmt: skip
    assert time.monotonic() - t0 < 10
    assert isinstance(task.error, bgtransfer.TransferTimeout), task.error
    assert "slower than 1000000 B/s" in str(task.error)
    assert partials(dest) == []


def test_resource_timeout_stops_every_segment(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 8 << 20
    dest = tmp_path / "rt.bin"
    url = server.url(f"/gen/{size}?rate=500000&key={key}")
    t0 = time.monotonic()
    task = fetch(session, url, dest, segments=4, resource_timeout=1.0)
    assert time.monotonic() - t0 < 5
    assert isinstance(task.error, bgtransfer.TransferTimeout), task.error
    assert partials(dest) == []
    n = len(by_key(server, key))
    time.sleep(0.3)
    assert len(by_key(server, key)) == n
