"""The fault matrix (research/reliability.md §2) against the real engine and a real server.

Every test talks HTTP to the project's fault-injecting server on 127.0.0.1, writes real files
and a real SQLite store, and checks the request log the way curl's test suite does.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer import TaskState
from bgtransfer.testing import FaultServer, RequestRecord, gen_bytes, gen_sha256

FAST: dict[str, Any] = {"retry_wait": 0.05, "max_retry_wait": 0.2}
SIZE = 1 << 20


def by_key(server: FaultServer, key: str, path: str = "") -> list[RequestRecord]:
    return [r for r in server.requests(path) if r.query.get("key") == key]


def get(session: bgtransfer.Session, url: str, dest: Path, **kw: Any) -> bgtransfer.Task:
    opts = {**FAST, **kw}
    task = session.download(url, dest, **opts)
    return task.wait(timeout=60)


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``cond`` until it holds (bounded: fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def partials(dest: Path) -> list[str]:
    return [p for p in os.listdir(dest.parent) if p.startswith(f".{dest.name}.")]


def assert_ok(task: bgtransfer.Task, dest: Path, expected: bytes) -> None:
    assert task.state is TaskState.COMPLETED
    assert task.error is None, task.error
    assert dest.read_bytes() == expected
    assert partials(dest) == []


def assert_failed(task: bgtransfer.Task, dest: Path, kind: type[Exception]) -> None:
    assert task.state is TaskState.COMPLETED
    assert isinstance(task.error, kind), task.error
    assert not dest.exists()
    assert partials(dest) == []


def test_clean_download_sends_identity_and_no_range(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "a.bin"
    task = get(session, server.url(f"/gen/{SIZE}?key={key}"), dest)
    assert_ok(task, dest, gen_bytes(SIZE))
    (req,) = by_key(server, key)
    assert req.accept_encoding == "identity"
    assert req.range is None
    assert req.if_range is None
    assert task.bytes_received == task.bytes_expected == SIZE
    assert task.status_code == 200


@pytest.mark.parametrize("fault", ["cut=300000", "rst=300000", "chunked_cut=300000"])
def test_truncation_resumes_with_range_and_if_range(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str, fault: str
) -> None:
    """Row 4: truncated bodies are retried from the committed offset, never restarted."""
    dest = tmp_path / "t.bin"
    url = server.url(f"/gen/{SIZE}?{fault}&times=2&key={key}")
    task = get(session, url, dest)
    assert_ok(task, dest, gen_bytes(SIZE))
    reqs = by_key(server, key)
    assert len(reqs) == 3
    assert reqs[0].range is None
    for r in reqs[1:]:
        assert r.range is not None
        assert r.range.startswith("bytes=")
        assert int(r.range[6:-1]) > 0
        assert r.if_range == f'"gen-{SIZE}-0-v0"'
    assert task.restarts == 0


def test_ignore_range_restarts_from_zero(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Row 1, curl test 38: a 200 to a Range request means start afresh, never append."""
    dest = tmp_path / "r1.bin"
    task = get(
        session, server.url(f"/gen/{SIZE}?cut=400000&times=1&ignore_range=1&key={key}"), dest
    )
    assert_ok(task, dest, gen_bytes(SIZE))
    assert task.restarts == 1
    assert by_key(server, key)[1].range == "bytes=400000-"


@pytest.mark.parametrize("fault", ["wrong_range=1000", "bad_total=1"])
def test_lying_content_range_is_never_appended(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str, fault: str
) -> None:
    """Row 2: a 206 whose window is not ours restarts cleanly from 0."""
    dest = tmp_path / "r2.bin"
    task = get(session, server.url(f"/gen/{SIZE}?cut=400000&times=1&{fault}&key={key}"), dest)
    assert_ok(task, dest, gen_bytes(SIZE))
    assert task.restarts == 1
    reqs = by_key(server, key)
    assert reqs[-1].range is None


def test_full_body_as_206_is_treated_as_200(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "f206.bin"
    task = get(session, server.url(f"/gen/{SIZE}?cut=400000&times=1&full_as_206=1&key={key}"), dest)
    assert_ok(task, dest, gen_bytes(SIZE))
    assert task.restarts == 1
    assert len(by_key(server, key)) == 2


def test_200_with_matching_content_range_is_appended(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Row 3: our documented choice is to accept a 200 that proves its window exactly."""
    dest = tmp_path / "r3.bin"
    task = get(
        session, server.url(f"/gen/{SIZE}?cut=400000&times=1&range_as_200=1&key={key}"), dest
    )
    assert_ok(task, dest, gen_bytes(SIZE))
    assert task.restarts == 0


def test_changed_resource_restarts_and_ends_with_new_version(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Row 5: If-Range carries the old ETag; the server's 200 brings the new version."""
    old, new = os.urandom(SIZE), os.urandom(SIZE)
    name = f"changing-{key}"
    url = server.add(name, old)
    server.replace(name, old)
    dest = tmp_path / "r5.bin"
    task = session.download(url + "?rate=2000000", dest, **FAST)
    deadline = time.monotonic() + 10
    while task.bytes_received < 100_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.replace(name, new)
    task.suspend()
    task.resume()
    task.wait(timeout=30)
    assert_ok(task, dest, new)
    reqs = server.requests(f"/r/{name}")
    assert reqs[-1].if_range == f'"{hashlib.sha256(old).hexdigest()}"' or reqs[-1].if_range
    assert task.restarts == 1


def test_resource_that_keeps_changing_fails_after_five_restarts(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "flip.bin"
    task = get(session, server.url(f"/gen/{SIZE}?cut=200000&etag_change=1&key={key}"), dest)
    assert_failed(task, dest, bgtransfer.ContentChanged)
    assert "resource keeps changing" in str(task.error)
    reqs = by_key(server, key)
    # The first download, five restarted ones, then the answer that would need a sixth.
    assert len(reqs) == 7
    assert all(r.if_range is not None for r in reqs[1:])


def test_gzip_despite_identity_is_stored_raw_and_resumes(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Row 6: never decode a gzip slice; the raw representation resumes byte-exact."""
    data = gen_bytes(SIZE, seed=3)
    dest = tmp_path / "gz.bin"
    task = get(session, server.url(f"/gen/{SIZE}?seed=3&gzip=1&cut=5000&times=1&key={key}"), dest)
    assert_ok(task, dest, gzip.compress(data, mtime=0))
    assert gzip.decompress(dest.read_bytes()) == data


def test_redirect_loop_fails_after_ten_hops(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path
) -> None:
    """Row 8, curl tests 25/274."""
    dest = tmp_path / "loop.bin"
    before = len(server.requests("/loop/"))
    task = get(session, server.url("/loop/0"), dest)
    assert_failed(task, dest, bgtransfer.RedirectError)
    assert "too many redirects" in str(task.error)
    assert len(server.requests("/loop/")) - before == 11
    assert task.attempts == 1


@pytest.mark.parametrize("target", ["file:///etc/passwd", "gopher://127.0.0.1/x", "ftp://x/y"])
def test_redirect_to_other_scheme_is_refused(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, target: str
) -> None:
    """Row 9."""
    from urllib.parse import quote

    dest = tmp_path / "scheme.bin"
    task = get(session, server.url(f"/redirect?to={quote(target, safe='')}"), dest)
    assert_failed(task, dest, bgtransfer.RedirectError)
    assert task.attempts == 1


def test_credentials_are_dropped_on_cross_origin_redirect(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Row 10: the other origin never sees Authorization or Cookie; the first one does."""
    from urllib.parse import quote

    assert server.other_base_url is not None
    other = f"{server.other_base_url}/gen/{SIZE}?key={key}"
    dest = tmp_path / "xo.bin"
    headers = {"Authorization": "Bearer secret", "Cookie": "a=b", "X-Keep": "1"}
    task = get(
        session,
        server.url(f"/redirect?to={quote(other, safe='')}&key={key}"),
        dest,
        headers=headers,
    )
    assert_ok(task, dest, gen_bytes(SIZE))
    first = by_key(server, key, "/redirect")[-1]
    assert first.authorization == "Bearer secret"
    assert first.cookie == "a=b"
    (final,) = by_key(server, key, "/gen/")
    assert final.host == "127.0.0.2"
    assert final.authorization is None
    assert final.cookie is None
    assert final.headers.get("x-keep") == "1"


def test_same_origin_redirect_keeps_credentials(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    from urllib.parse import quote

    dest = tmp_path / "so.bin"
    target = server.url(f"/gen/{SIZE}?key={key}")
    get(
        session,
        server.url(f"/redirect?to={quote(target, safe='')}"),
        dest,
        headers={"Authorization": "x"},
    )
    (final,) = by_key(server, key, "/gen/")
    assert final.authorization == "x"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried_and_error_body_never_written(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str, status: int
) -> None:
    dest = tmp_path / "st.bin"
    task = get(session, server.url(f"/gen/{SIZE}?status={status}&times=2&key={key}"), dest)
    assert_ok(task, dest, gen_bytes(SIZE))
    assert task.attempts == 3


def test_retry_after_seconds_is_honoured(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Row 11, curl tests 1633-1635."""
    dest = tmp_path / "ra.bin"
    t0 = time.monotonic()
    task = get(session, server.url(f"/gen/{SIZE}?status=429&retry_after=1&times=1&key={key}"), dest)
    assert_ok(task, dest, gen_bytes(SIZE))
    reqs = by_key(server, key)
    assert reqs[1].time - reqs[0].time >= 0.9
    assert time.monotonic() - t0 < 10


def test_retry_after_http_date_is_honoured(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "rad.bin"
    task = get(
        session, server.url(f"/gen/{SIZE}?status=503&retry_after_in=2&times=1&key={key}"), dest
    )
    assert_ok(task, dest, gen_bytes(SIZE))
    reqs = by_key(server, key)
    # An HTTP-date has one-second resolution, so 2 s ahead is at least 1 s of waiting.
    assert reqs[1].time - reqs[0].time >= 0.9


def test_retry_after_beyond_resource_time_is_not_retried(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """curl test 366: a Retry-After longer than the time left ends the task now."""
    dest = tmp_path / "366.bin"
    t0 = time.monotonic()
    url = server.url(f"/gen/{SIZE}?status=503&retry_after=200&key={key}")
    task = get(session, url, dest, resource_timeout=10)
    assert_failed(task, dest, bgtransfer.HTTPStatusError)
    assert task.error is not None
    assert task.error.status_code == 503
    assert time.monotonic() - t0 < 5
    assert len(by_key(server, key)) == 1


@pytest.mark.parametrize("status", [401, 403, 404, 410])
def test_permanent_status_fails_with_its_code(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str, status: int
) -> None:
    dest = tmp_path / "p.bin"
    task = get(session, server.url(f"/gen/{SIZE}?status={status}&key={key}"), dest)
    assert_failed(task, dest, bgtransfer.HTTPStatusError)
    assert task.error is not None
    assert task.error.status_code == status
    assert task.status_code == status
    assert task.attempts == 1


def test_stalled_headers_hit_the_idle_timeout_and_retry(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Row 12."""
    dest = tmp_path / "sh.bin"
    task = get(
        session,
        server.url(f"/gen/{SIZE}?stall_headers=5&times=1&key={key}"),
        dest,
        request_timeout=0.5,
    )
    assert_ok(task, dest, gen_bytes(SIZE))
    reqs = by_key(server, key)
    assert len(reqs) == 2
    assert 0.4 < reqs[1].time - reqs[0].time < 3


def test_stalled_body_resumes_from_offset(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "sb.bin"
    url = server.url(f"/gen/{SIZE}?stall_body=500000&stall=5&times=1&key={key}")
    task = get(session, url, dest, request_timeout=0.5)
    assert_ok(task, dest, gen_bytes(SIZE))
    assert by_key(server, key)[1].range == "bytes=500000-"


def test_trickle_is_caught_by_the_low_speed_watchdog(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Row 13: idle timeouts never fire on a trickle; the speed watchdog does."""
    dest = tmp_path / "tr.bin"
    url = server.url(f"/gen/{SIZE}?trickle=10&interval=0.1&key={key}")
    t0 = time.monotonic()
    task = get(
        session,
        url,
        dest,
        request_timeout=1,
        low_speed_limit=1000,
        low_speed_time=1,
        max_attempts=2,
    )
    assert_failed(task, dest, bgtransfer.TransferTimeout)
    assert "slower than 1000 B/s" in str(task.error)
    assert task.attempts == 2
    assert time.monotonic() - t0 < 10


def test_huge_headers_fail_without_retry(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Row 14."""
    dest = tmp_path / "hh.bin"
    task = get(session, server.url(f"/gen/{SIZE}?huge_headers=10000&key={key}"), dest)
    assert_failed(task, dest, bgtransfer.TransferError)
    assert "invalid HTTP response" in str(task.error)
    assert task.attempts == 1


def test_connection_refused_is_retried_until_attempts_run_out(
    session: bgtransfer.Session, tmp_path: Path
) -> None:
    """Row 24."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "cr.bin"
    task = get(session, f"http://127.0.0.1:{port}/x", dest, max_attempts=3)
    assert_failed(task, dest, bgtransfer.ConnectError)
    assert task.attempts == 3


def test_resource_timeout_bounds_the_whole_task(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "rt.bin"
    t0 = time.monotonic()
    url = server.url(f"/gen/{SIZE}?stall_headers=30&key={key}")
    task = get(session, url, dest, request_timeout=20, resource_timeout=1)
    assert_failed(task, dest, bgtransfer.TransferTimeout)
    assert "resource timeout" in str(task.error)
    assert time.monotonic() - t0 < 5


def test_resumed_416_for_complete_file_is_done(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """curl tests 1475/92: a resume of a complete file answers 416 */N and is success."""
    dest = tmp_path / "416.bin"
    url = server.url(f"/gen/{SIZE}?cut={SIZE}&times=1&key={key}")
    task = get(session, url, dest)
    assert_ok(task, dest, gen_bytes(SIZE))


def test_sha256_verified_across_resumes(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "sha.bin"
    url = server.url(f"/gen/{SIZE}?cut=333333&times=2&key={key}")
    task = get(session, url, dest, sha256=gen_sha256(SIZE))
    assert_ok(task, dest, gen_bytes(SIZE))


def test_sha256_mismatch_fails_and_leaves_nothing(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "bad.bin"
    task = get(session, server.url(f"/gen/{SIZE}?key={key}"), dest, sha256="0" * 64)
    assert_failed(task, dest, bgtransfer.IntegrityError)
    assert "sha256 mismatch" in str(task.error)


def test_existing_target_is_refused_unless_overwrite(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "exists.bin"
    dest.write_bytes(b"mine")
    with pytest.raises(bgtransfer.InvalidRequest, match="already exists"):
        session.download(server.url(f"/gen/{SIZE}?key={key}"), dest)
    assert dest.read_bytes() == b"mine"
    assert session.tasks() == []
    task = get(session, server.url(f"/gen/{SIZE}?key={key}"), dest, overwrite=True)
    assert_ok(task, dest, gen_bytes(SIZE))


def test_target_appearing_during_download_is_not_clobbered(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "race.bin"
    task = session.download(server.url(f"/gen/{SIZE}?rate=2000000&key={key}"), dest, **FAST)
    wait_until(lambda: task.bytes_received > 0, "the download to start")
    dest.write_bytes(b"someone else's")
    task.wait(timeout=30)
    assert isinstance(task.error, bgtransfer.DestinationError)
    assert dest.read_bytes() == b"someone else's"


def test_partial_file_is_hidden_private_and_never_the_target(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "hidden.bin"
    task = session.download(server.url(f"/gen/{SIZE}?rate=1000000&key={key}"), dest, **FAST)
    deadline = time.monotonic() + 10
    parts: list[str] = []
    while not parts and time.monotonic() < deadline:
        parts = [p for p in os.listdir(tmp_path) if p.endswith(".bgtransfer-part")]
        time.sleep(0.01)
    assert parts
    assert parts[0].startswith(".hidden.bin.")
    assert os.stat(tmp_path / parts[0]).st_mode & 0o777 == 0o600
    assert not dest.exists()
    task.cancel()


def test_symlink_planted_at_partial_path_is_refused(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Row 17: a planted symlink never redirects our writes. Issue 11 item 7: it is not
    adopted either: its name is dropped (the victim untouched) and the download goes on
    into a file of its own."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    dest = tmp_path / "sym.bin"
    task = session.download(server.url(f"/gen/{SIZE}?stall_headers=1&key={key}"), dest, **FAST)
    row_partial = session._async._engine_or_raise().get(task.id).partial
    os.symlink(victim, row_partial)
    task.wait(timeout=30)
    assert task.error is None, task.error
    assert victim.read_bytes() == b"precious"
    assert not dest.is_symlink()
    assert dest.read_bytes() == gen_bytes(SIZE)


def test_suspend_stops_traffic_and_resume_continues_with_range(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "sus.bin"
    size = 4 << 20
    task = session.download(server.url(f"/gen/{size}?rate=4000000&key={key}"), dest, **FAST)
    deadline = time.monotonic() + 10
    while task.bytes_received < 500_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    task.suspend()
    assert time.monotonic() - t0 < 1.0
    assert task.state is TaskState.SUSPENDED
    held = task.bytes_received
    assert held > 0
    n = len(by_key(server, key))
    time.sleep(0.3)
    assert task.bytes_received == held
    assert len(by_key(server, key)) == n
    task.resume()
    task.wait(timeout=30)
    assert_ok(task, dest, gen_bytes(size))
    assert by_key(server, key)[-1].range == f"bytes={held}-"


def test_suspend_during_connect_and_during_backoff(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "sc.bin"
    task = session.download(
        server.url(f"/gen/{SIZE}?stall_headers=10&times=1&key={key}"), dest, **FAST
    )
    wait_until(lambda: len(by_key(server, key)) > 0, "the request to reach the server")
    t0 = time.monotonic()
    task.suspend()
    assert time.monotonic() - t0 < 1.0
    assert task.state is TaskState.SUSPENDED
    task.resume()
    assert_ok(task.wait(timeout=30), dest, gen_bytes(SIZE))

    dest2 = tmp_path / "sb2.bin"
    url = server.url(f"/gen/{SIZE}?status=503&retry_after=30&times=1&key={key}2")
    task2 = session.download(url, dest2, **FAST)
    deadline = time.monotonic() + 10
    while "retrying" not in task2.detail and time.monotonic() < deadline:
        time.sleep(0.02)
    assert task2.state is TaskState.RUNNING
    assert "retrying in 30.0 s after 503" in task2.detail
    task2.suspend()
    assert task2.state is TaskState.SUSPENDED
    task2.resume()
    assert_ok(task2.wait(timeout=30), dest2, gen_bytes(SIZE))


def test_cancel_removes_partial_and_is_final(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "can.bin"
    task = session.download(server.url(f"/gen/{SIZE}?rate=500000&key={key}"), dest, **FAST)
    wait_until(lambda: task.bytes_received > 0, "the download to start")
    task.cancel()
    assert task.state is TaskState.COMPLETED
    assert isinstance(task.error, bgtransfer.Cancelled)
    assert_failed(task, dest, bgtransfer.Cancelled)
    with pytest.raises(bgtransfer.InvalidTransition):
        task.resume()
    with pytest.raises(bgtransfer.InvalidTransition):
        task.suspend()


def test_cancel_while_suspended(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "cs.bin"
    task = session.download(server.url(f"/gen/{SIZE}?rate=500000&key={key}"), dest, **FAST)
    wait_until(lambda: task.bytes_received > 0, "the download to start")
    task.suspend()
    task.cancel()
    assert_failed(task, dest, bgtransfer.Cancelled)


def test_global_limit_queues_extra_tasks(server: FaultServer, tmp_path: Path, key: str) -> None:
    with bgtransfer.Session("lim", home=tmp_path / "h", background=False, max_active=2) as s:
        tasks = [
            s.download(
                server.url(f"/gen/{SIZE}?rate=2000000&key={key}{i}"), tmp_path / f"q{i}", **FAST
            )
            for i in range(4)
        ]
        wait_until(lambda: sum(t.bytes_received > 0 for t in tasks) >= 2, "two downloads to start")
        details = [t.detail for t in tasks]
        assert details.count("queued") == 2, details
        assert all(t.state is TaskState.RUNNING for t in tasks)
        for i, t in enumerate(tasks):
            assert_ok(t.wait(timeout=30), tmp_path / f"q{i}", gen_bytes(SIZE))


def test_per_host_limit(server: FaultServer, tmp_path: Path, key: str) -> None:
    with bgtransfer.Session("ph", home=tmp_path / "h", background=False, max_per_host=1) as s:
        a = s.download(server.url(f"/gen/{SIZE}?rate=2000000&key={key}a"), tmp_path / "a", **FAST)
        b = s.download(server.url(f"/gen/{SIZE}?rate=2000000&key={key}b"), tmp_path / "b", **FAST)
        wait_until(lambda: a.bytes_received + b.bytes_received > 0, "one download to start")
        assert "queued" in (a.detail, b.detail)
        a.wait(timeout=30)
        b.wait(timeout=30)
        assert a.error is None
        assert b.error is None


def test_tasks_are_listed_from_a_later_session(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    home = tmp_path / "h"
    with bgtransfer.Session("later", home=home, background=False) as s:
        t = s.download(server.url(f"/gen/{SIZE}?key={key}"), tmp_path / "l.bin", **FAST)
        t.wait(timeout=30)
        tid = t.id
    with bgtransfer.Session("later", home=home, background=False) as s2:
        (seen,) = s2.tasks()
        assert seen.id == tid
        assert seen.state is TaskState.COMPLETED
        assert seen.error is None
        assert s2.task(tid).bytes_received == SIZE
    with bgtransfer.Session("other", home=home, background=False) as s3:
        assert s3.tasks() == []


def test_wait_timeout_raises_only_for_the_wait(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    task = session.download(
        server.url(f"/gen/{SIZE}?rate=500000&key={key}"), tmp_path / "w", **FAST
    )
    with pytest.raises(TimeoutError):
        task.wait(timeout=0.1)
    assert task.state is TaskState.RUNNING
    task.cancel()


def test_async_session_and_events(server: FaultServer, tmp_path: Path, key: str) -> None:
    import asyncio

    asyncio.run(_async_session_and_events(server, tmp_path, key))


async def _async_session_and_events(server: FaultServer, tmp_path: Path, key: str) -> None:
    import asyncio

    async with bgtransfer.AsyncSession("async", home=tmp_path / "h", background=False) as s:
        events: list[bgtransfer.Event] = []

        async def collect() -> None:
            async for ev in s.events():
                events.append(ev)
                if ev.state is TaskState.COMPLETED:
                    return

        collector = asyncio.create_task(collect())
        await asyncio.sleep(0)
        t = await s.download(server.url(f"/gen/{SIZE}?key={key}"), tmp_path / "as.bin", **FAST)
        await t.wait(timeout=30)
        await asyncio.wait_for(collector, 10)
        assert t.error is None
        assert (tmp_path / "as.bin").read_bytes() == gen_bytes(SIZE)
        assert events[-1].state is TaskState.COMPLETED
        assert events[-1].task_id == t.id
        assert events[-1].bytes_received == SIZE
        assert {e.kind for e in events} >= {"state"}


def test_history_records_every_request_and_its_outcome(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    from urllib.parse import quote

    target = server.url(f"/gen/{SIZE}?cut=300000&times=1&key={key}")
    dest = tmp_path / "hist.bin"
    task = get(session, server.url(f"/redirect?to={quote(target, safe='')}"), dest)
    assert_ok(task, dest, gen_bytes(SIZE))
    hist = task.history()
    assert [h["status"] for h in hist] == [302, 200, 302, 206]
    assert [h["range_start"] for h in hist] == [None, None, 300000, 300000]
    assert [h["bytes"] for h in hist] == [0, 300000, 0, SIZE - 300000]
    assert hist[0]["outcome"] == hist[2]["outcome"] == "redirected"
    assert hist[1]["outcome"].startswith("retrying in")
    assert "connection lost at byte 300000" in hist[1]["outcome"]
    assert hist[3]["outcome"] == "body complete"
    failed = get(session, server.url(f"/gen/{SIZE}?status=503&times=1&key={key}b"), tmp_path / "h2")
    assert [h["status"] for h in failed.history()] == [503, 200]
    assert "after 503" in failed.history()[0]["outcome"]


def test_queue_lives_in_the_store_not_in_coroutines(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Hundreds of queued tasks: only a bounded number are in memory at any time."""
    n = 300
    with bgtransfer.Session("queue", home=tmp_path / "h", background=False, max_active=4) as s:
        engine = s._async._engine_or_raise()
        tasks, peak = [], 0
        # One URL for all: its first 4 answers stall 10 s before their headers, so the
        # first tasks hold every slot while the rest are submitted, however slowly.
        url = server.url(f"/gen/20000?stall_headers=10&times=4&key={key}")
        for i in range(n):
            tasks.append(s.download(url, tmp_path / f"f{i}", **FAST))
            peak = max(peak, len(engine._live))
        assert 0 < peak <= engine._runner_cap()
        assert sum(1 for t in tasks if t.detail == "queued") > n // 2
        for i, t in enumerate(tasks):
            t.wait(timeout=60)
            assert t.error is None, t.error
            assert (tmp_path / f"f{i}").read_bytes() == gen_bytes(20000)
        assert len(engine._live) == 0


def test_closing_leaves_queued_tasks_resumable(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    home = tmp_path / "h"
    with bgtransfer.Session("q2", home=home, background=False, max_active=1) as s:
        ids = [
            # Each answer stalls after 1000 bytes, so however slowly a loaded machine
            # submits the 80, none can finish before the session closes.
            s.download(
                server.url(f"/gen/{SIZE}?stall_body=1000&stall=30&key={key}{i}"), tmp_path / f"g{i}"
            ).id
            for i in range(80)
        ]
    with bgtransfer.Session("q2", home=home, background=False) as s2:
        states = {t.id: t.state for t in s2.tasks()}
        assert set(states) == set(ids)
        assert set(states.values()) == {TaskState.SUSPENDED}
        assert all("interrupted" in t.detail for t in s2.tasks())


def test_wait_all_in_a_foreground_session(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    tasks = [
        session.download(server.url(f"/gen/5000?seed={i}&key={key}{i}"), tmp_path / f"a{i}")
        for i in range(20)
    ]
    assert session.wait_all(tasks, timeout=60) == tasks
    for i, t in enumerate(tasks):
        assert t.state is TaskState.COMPLETED
        assert t.error is None
        assert (tmp_path / f"a{i}").read_bytes() == gen_bytes(5000, seed=i)
