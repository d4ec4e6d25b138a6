"""Start times, bandwidth caps, origin cool-downs and priorities against the real engine.

Rates are measured over whole transfers from the engine's own request history (wall clock
of the first request and the end of the last); cool-downs and start times from the
server's request log. Margins are the issue's (3 s +- 15 % for 12 MiB at 4 MiB/s).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer import TaskState
from bgtransfer._protocol._origin import origin_key
from bgtransfer.testing import FaultServer, RequestRecord, gen_bytes

MiB = 1 << 20
FAST: dict[str, Any] = {"retry_wait": 0.05, "max_retry_wait": 0.2}


def by_key(server: FaultServer, key: str) -> list[RequestRecord]:
    return [r for r in server.requests() if r.query.get("key") == key]


def took(task: bgtransfer.Task) -> float:
    """Seconds from the first request to the end of the last, as the engine recorded them."""
    hist = task.history()
    return float(hist[-1]["ended_at"] - hist[0]["started_at"])


def assert_ok(task: bgtransfer.Task, dest: Path, size: int) -> None:
    assert task.state is TaskState.COMPLETED
    assert task.error is None, task.error
    assert dest.read_bytes() == gen_bytes(size)


def set_limit(session: bgtransfer.Session, origin: str | None, rate: int | None) -> None:
    engine = session._async._engine_or_raise()

    async def go() -> None:  # on the engine's own loop: the store is not shared by threads
        engine.set_limit(origin, rate)

    session._call(go())


# -- start_at --------------------------------------------------------------------------------


def test_start_at_sends_nothing_before_then_and_resource_time_starts_there(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "later.bin"
    mono0, wall0 = time.monotonic(), time.time()
    task = session.download(
        server.url(f"/gen/64K?key={key}"),
        dest,
        start_at=wall0 + 2.0,
        resource_timeout=1.5,  # shorter than the wait: it must count from start_at
        **FAST,
    )
    assert task.state is TaskState.RUNNING
    assert task.detail.startswith("scheduled for "), task.detail
    time.sleep(1.0)
    assert by_key(server, key) == []
    assert task.detail.startswith("scheduled for ")
    task.wait(timeout=30)
    assert_ok(task, dest, 64 << 10)
    (req,) = by_key(server, key)
    assert req.time - mono0 >= 2.0 - 0.05


def test_start_at_in_the_past_starts_now(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "now.bin"
    task = session.download(
        server.url(f"/gen/1K?key={key}"), dest, start_at=time.time() - 3600, **FAST
    )
    task.wait(timeout=30)
    assert_ok(task, dest, 1024)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("start_at", "tomorrow"),
        ("start_at", float("nan")),
        ("start_at", True),
        ("max_rate", 0),
        ("max_rate", -5),
        ("max_rate", "4X"),
        ("max_rate", 1.5),
        ("priority", "urgent"),
        ("priority", 1),
    ],
)
def test_bad_scheduling_options_are_refused_before_any_task(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, option: str, value: Any
) -> None:
    with pytest.raises(bgtransfer.InvalidRequest, match=option):
        session.download(server.url("/gen/1K"), tmp_path / "x.bin", **{option: value})
    assert session.tasks() == []


# -- bandwidth -------------------------------------------------------------------------------


def test_max_rate_caps_a_whole_transfer(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 12 * MiB
    dest = tmp_path / "capped.bin"
    task = session.download(server.url(f"/gen/{size}?key={key}"), dest, max_rate="4M", **FAST)
    task.wait(timeout=60)
    assert_ok(task, dest, size)
    assert task.to_dict()["max_rate"] == 4 * MiB
    seconds = took(task)
    assert 3.0 * 0.85 <= seconds <= 3.0 * 1.15, f"12 MiB at 4 MiB/s took {seconds:.2f} s"


def test_max_rate_counts_every_connection_of_a_segmented_download(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 8 * MiB
    dest = tmp_path / "seg.bin"
    task = session.download(
        server.url(f"/gen/{size}?key={key}"), dest, segments=4, max_rate=4 * MiB, **FAST
    )
    task.wait(timeout=60)
    assert_ok(task, dest, size)
    assert len(by_key(server, key)) >= 2  # it did use several connections
    seconds = took(task)
    assert 2.0 * 0.85 <= seconds <= 2.0 * 1.15, f"8 MiB over 4 connections: {seconds:.2f} s"


def test_global_cap_is_shared_fairly_and_can_be_lifted(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    set_limit(session, None, 4 * MiB)
    size = 6 * MiB
    tasks = [
        session.download(server.url(f"/gen/{size}?key={key}&n={i}"), tmp_path / f"{i}.bin", **FAST)
        for i in range(2)
    ]
    session.wait_all(tasks, timeout=60)
    for i, t in enumerate(tasks):
        assert_ok(t, tmp_path / f"{i}.bin", size)
    times = sorted(took(t) for t in tasks)
    # 12 MiB in all at 4 MiB/s: about 3 s; shared, so neither finishes long before the other.
    assert 3.0 * 0.85 <= times[1] <= 3.0 * 1.15, times
    assert times[0] >= 0.75 * times[1], f"unfair share: {times}"
    set_limit(session, None, None)
    t = session.download(server.url(f"/gen/{size}?key={key}&n=free"), tmp_path / "f.bin")
    t.wait(timeout=60)
    assert took(t) < 1.0  # no cap any more (a loopback 6 MiB takes milliseconds)


def test_an_origin_cap_applies_to_that_origin_only(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    assert server.other_base_url is not None
    set_limit(session, origin_key(server.base_url), 4 * MiB)
    try:
        size = 8 * MiB
        capped = session.download(server.url(f"/gen/{size}?key={key}"), tmp_path / "c.bin")
        free = session.download(f"{server.other_base_url}/gen/{size}?key={key}", tmp_path / "f.bin")
        session.wait_all([capped, free], timeout=60)
        assert_ok(capped, tmp_path / "c.bin", size)
        assert_ok(free, tmp_path / "f.bin", size)
        assert 2.0 * 0.85 <= took(capped) <= 2.0 * 1.15, took(capped)
        assert took(free) < 1.0, took(free)
    finally:
        set_limit(session, origin_key(server.base_url), None)


# -- politeness ------------------------------------------------------------------------------


def test_retry_after_cools_the_whole_origin_down(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    assert server.other_base_url is not None
    first = session.download(
        server.url(f"/gen/1K?status=429&retry_after=3&times=1&key={key}a"),
        tmp_path / "a.bin",
        **FAST,
    )
    deadline = time.monotonic() + 20
    while not by_key(server, key + "a") and time.monotonic() < deadline:
        time.sleep(0.02)
    (told,) = by_key(server, key + "a")
    second = session.download(server.url(f"/gen/1K?key={key}b"), tmp_path / "b.bin", **FAST)
    other = session.download(f"{server.other_base_url}/gen/1K?key={key}c", tmp_path / "c.bin")
    seen = ""
    while second.state is TaskState.RUNNING and not seen and time.monotonic() < deadline:
        if second.detail.startswith("origin asked to wait until"):
            seen = second.detail
        time.sleep(0.05)
    assert "429" in seen, seen
    other.wait(timeout=30)
    session.wait_all([first, second], timeout=30)
    for name, t in (("a", first), ("b", second), ("c", other)):
        assert_ok(t, tmp_path / f"{name}.bin", 1024)
    (asked_b,) = by_key(server, key + "b")
    (asked_c,) = by_key(server, key + "c")
    retry_a = by_key(server, key + "a")[1]
    # Nothing went to the origin before the time it named; another origin was not held up.
    assert asked_b.time - told.time >= 3.0 - 0.05
    assert retry_a.time - told.time >= 3.0 - 0.05
    assert asked_c.time - told.time < 2.5


# -- priority --------------------------------------------------------------------------------


def test_queued_work_starts_in_priority_order(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    with bgtransfer.Session("prio", home=tmp_path / "home", background=False, max_active=1) as s:
        blocker = s.download(
            server.url(f"/gen/256K?rate=262144&key={key}-block"), tmp_path / "block.bin"
        )
        deadline = time.monotonic() + 20
        while not by_key(server, f"{key}-block") and time.monotonic() < deadline:
            time.sleep(0.02)
        order = [("low1", "low"), ("normal1", "normal"), ("high1", "high"), ("low2", "low"),
                 ("high2", "high")]  # fmt: skip
        tasks = [
            s.download(server.url(f"/gen/1K?key={key}-{name}"), tmp_path / name, priority=p)
            for name, p in order
        ]
        s.wait_all([blocker, *tasks], timeout=60)
        assert all(t.error is None for t in tasks)
        assert blocker.to_dict()["priority"] == "normal"
    started = [
        r.query["key"].split("-", 1)[1]
        for r in server.requests()
        if r.query.get("key", "").startswith(key + "-")
    ]
    assert started == ["block", "high1", "high2", "normal1", "low1", "low2"]


def test_a_global_cap_changed_while_a_transfer_runs_takes_effect_at_once(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    set_limit(session, None, 1 * MiB)
    try:
        size = 8 * MiB
        dest = tmp_path / "runtime.bin"
        task = session.download(server.url(f"/gen/{size}?key={key}"), dest, **FAST)
        time.sleep(1.0)
        assert 0 < task.bytes_received < 3 * MiB  # held to about 1 MiB/s so far
        set_limit(session, None, 64 * MiB)
        task.wait(timeout=60)
        assert_ok(task, dest, size)
        # At 1 MiB/s throughout it would take about 8 s.
        assert took(task) < 4.0, took(task)
    finally:
        set_limit(session, None, None)


def test_max_rate_caps_an_upload(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 4 * MiB
    src = tmp_path / "up.bin"
    src.write_bytes(gen_bytes(size))
    t0 = time.monotonic()
    task = session.upload(src, server.url(f"/upload/{key}"), max_rate="2M", **FAST)
    task.wait(timeout=60)
    elapsed = time.monotonic() - t0
    assert task.error is None, task.error
    assert server.uploads[key] == gen_bytes(size)
    (req,) = server.requests(f"/upload/{key}")
    # 4 MiB at 2 MiB/s: about 2 s (1.9 s after the slack), measured from the request.
    assert 2.0 * 0.85 <= elapsed <= 2.0 * 1.15 + 0.3, elapsed
    assert req.time - t0 < 0.5


def test_a_resume_by_a_person_overrides_the_cool_down_for_that_task_only(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    first = session.download(
        server.url(f"/gen/1K?status=503&retry_after=30&times=1&key={key}a"),
        tmp_path / "a.bin",
        **FAST,
    )
    deadline = time.monotonic() + 20
    while "retrying in 30.0 s" not in first.detail and time.monotonic() < deadline:
        time.sleep(0.02)
    second = session.download(server.url(f"/gen/1K?key={key}b"), tmp_path / "b.bin", **FAST)
    while not second.detail.startswith("origin asked") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert second.detail.startswith("origin asked to wait until"), second.detail
    first.suspend()
    first.resume()
    first.wait(timeout=20)
    assert_ok(first, tmp_path / "a.bin", 1024)
    assert second.state is TaskState.RUNNING
    assert second.detail.startswith("origin asked to wait until")
    assert by_key(server, key + "b") == []
    second.cancel()


def test_new_segment_connections_wait_out_a_cool_down_that_began_mid_task(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 4 * MiB
    dest = tmp_path / "segcool.bin"
    url = server.url(f"/gen/{size}?stall_headers=1&times=1&key={key}")
    task = session.download(url, dest, segments=4, **FAST)
    deadline = time.monotonic() + 20
    while not by_key(server, key) and time.monotonic() < deadline:
        time.sleep(0.01)
    engine = session._async._engine_or_raise()

    async def told_to_wait() -> float:  # as if another task just got "503, Retry-After: 2"
        engine.polite.on_response(origin_key(url), 503, 2.0)
        return time.monotonic()

    since = session._call(told_to_wait())
    task.wait(timeout=60)
    assert_ok(task, dest, size)
    first, *others = by_key(server, key)
    assert first.range is None
    assert others, "the download never opened a second connection"
    # The first answer came after 1 s, inside the cool-down; the segments' own requests
    # waited for its end.
    assert min(r.time for r in others) - since >= 2.0 - 0.05
