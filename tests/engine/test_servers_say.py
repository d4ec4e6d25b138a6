"""Issue 11, "what servers say", against real servers: the project's fault server and a real
S3 implementation (moto's server), plus issue 14's connection-counted origin limits."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer import TaskState
from bgtransfer._engine._limiter import origin_key
from bgtransfer._protocol._machine import DEFAULT_LOW_SPEED_LIMIT, DEFAULT_LOW_SPEED_TIME
from bgtransfer.testing import FaultServer, gen_bytes
from bgtransfer.testing._thirdparty import CutProxy

MiB = 1 << 20
FAST: dict[str, Any] = {"retry_wait": 0.05, "max_retry_wait": 0.2}
# moto checks no signature, but an anonymous GET of a private object is refused (403), as
# on S3: any SigV4-shaped Authorization header makes it a signed request.
S3_AUTH = {
    "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature=0"
}


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- a real S3: moto's server ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, data: bytes | None = None) -> int:
        req = urllib.request.Request(self.base + path, data=data, method=method)
        for k, v in S3_AUTH.items():
            req.add_header(k, v)
        req.add_header("Content-Type", "application/octet-stream")
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return int(resp.status)

    def put(self, key: str, data: bytes) -> None:
        assert self.call("PUT", f"/bkt/{key}", data) == 200


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    if importlib.util.find_spec("moto") is None:  # pragma: no cover - installed by [dev]
        pytest.skip("moto[server] is not installed (pip install -e '.[dev]')")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        store = S3(port)
        deadline = time.monotonic() + 60
        while True:
            try:
                store.call("PUT", "/bkt")
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield store
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize("segments", [1, 4])
def test_s3_replaced_mid_download_gives_one_version(
    s3: S3, tmp_path: Path, key: str, segments: int
) -> None:
    """S3 answers a Range with 206 even when If-Range names an older version."""
    size = 8 * MiB
    v1, v2 = os.urandom(size), os.urandom(size)
    name = f"obj-{key}"
    s3.put(name, v1)
    replaced = threading.Event()

    def replace() -> None:
        s3.put(name, v2)
        replaced.set()

    # Cut the first connection whose answer passes 1 MiB (inside a segment when there are four).
    proxy = CutProxy(int(s3.base.rsplit(":", 1)[1]), after=MiB, on_cut=replace)
    try:
        url = f"http://127.0.0.1:{proxy.port}/bkt/{name}"
        dest = tmp_path / "s3.bin"
        with bgtransfer.Session("s3", home=tmp_path / "home", background=False) as s:
            t = s.download(url, dest, headers=S3_AUTH, segments=segments, **FAST)
            t.wait(timeout=120)
            assert t.state is TaskState.COMPLETED
            assert t.error is None, t.error
            history = t.history()
    finally:
        proxy.close()
    assert replaced.is_set()
    got = dest.read_bytes()
    assert got in (v1, v2), "old and new bytes mixed"
    # The resume after the cut asked S3 with If-Range and got v2's 206, which was refused.
    assert got == v2
    assert t.restarts >= 1
    assert any(h["status"] == 206 for h in history)


# -- the fault server ignoring If-Range ------------------------------------------------------


@pytest.mark.parametrize("validator", ["etag", "last_modified"])
def test_a_206_of_a_new_version_restarts_single_stream(
    server: FaultServer, tmp_path: Path, key: str, validator: str
) -> None:
    # Every request gets a new version (etag_change) and a Range is always honoured
    # (ignore_if_range): request 1 is cut, request 2 is a 206 of version 2, which must not
    # be appended; the restart's request 3 is version 3, whole.
    size = 2 * MiB
    knobs = "etag_change=1&ignore_if_range=1&cut=700000&times=1"
    if validator == "last_modified":
        knobs += "&no_etag=1"
    url = server.url(f"/gen/{size}?{knobs}&key={key}")
    with bgtransfer.Session("ir", home=tmp_path / "home", background=False) as s:
        t = s.download(url, tmp_path / "f.bin", **FAST).wait(timeout=60)
    assert t.error is None, t.error
    got = (tmp_path / "f.bin").read_bytes()
    assert got == gen_bytes(size, 3)
    reqs = server.requests(f"/gen/{size}")
    mine = [r for r in reqs if r.query.get("key") == key]
    assert len(mine) == 3
    assert mine[1].range == "bytes=700000-"
    assert mine[1].if_range is not None  # sent, and ignored by the server
    assert mine[2].range is None
    assert t.restarts == 1


# test_a_206_of_a_new_version_restarts_segments: in test_virtual_time.py (no wall-time race).


def test_weak_etag_resume_sends_no_date_in_if_range(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 2 * MiB
    url = server.url(f"/gen/{size}?weak_etag=1&cut=500000&times=1&key={key}")
    with bgtransfer.Session("w", home=tmp_path / "home", background=False) as s:
        t = s.download(url, tmp_path / "w.bin", **FAST).wait(timeout=60)
    assert t.error is None, t.error
    assert (tmp_path / "w.bin").read_bytes() == gen_bytes(size)
    mine = [r for r in server.requests(f"/gen/{size}") if r.query.get("key") == key]
    assert len(mine) == 2
    assert mine[1].range == "bytes=500000-"
    assert mine[1].if_range is None


# -- 12: upload retries back off -------------------------------------------------------------


# test_put_answered_500_backs_off: in test_virtual_time.py (the backoff on virtual time).


# -- 13: tus checksums survive a resume ------------------------------------------------------


def test_tus_checksums_are_asked_again_after_suspend_resume(
    server: FaultServer, tmp_path: Path
) -> None:
    data = os.urandom(6 * MiB)
    src = tmp_path / f"tus-{os.urandom(4).hex()}.bin"
    src.write_bytes(data)
    server.upload_faults(src.name, cut_after=2 * MiB)
    with bgtransfer.Session("tus", home=tmp_path / "home", background=False) as s:
        t = s.upload(src, server.url("/tus/"), protocol="tus", chunk_size=MiB, retry_wait=30.0)
        wait_until(lambda: "retrying" in t.detail, 30, "the retry wait after the cut")
        t.suspend()  # the task's in-memory state goes; what the server offered went with it
        t.resume()
        t.wait(timeout=60)
    assert t.error is None, t.error
    assert server.tus_data(src.name) == data
    patches = [r for r in server.requests("/tus/") if r.method == "PATCH"]
    assert len(patches) >= 6
    assert all(r.headers.get("upload-checksum", "").startswith("sha") for r in patches)
    # The resumed upload asked again (a second OPTIONS), then checked every chunk.
    options = [r for r in server.requests("/tus") if r.method == "OPTIONS"]
    assert len(options) >= 2


# -- 15: origins, the low-speed rule, max_bytes, connections ---------------------------------


def test_origin_key() -> None:
    assert origin_key("http://Example.com/x") == "http://example.com:80"
    assert origin_key("https://example.com:8443/") == "https://example.com:8443"
    assert origin_key("http://[::1]:81/") == "http://[::1]:81"
    assert origin_key("http://127.0.0.1:1/") != origin_key("http://127.0.0.1:2/")


def test_per_origin_limit_keys_on_the_port(server: FaultServer, tmp_path: Path) -> None:
    with FaultServer() as other:
        urls = [
            server.url(f"/gen/{MiB}?rate=500000&key={os.urandom(4).hex()}"),
            other.url(f"/gen/{MiB}?rate=500000&key={os.urandom(4).hex()}"),
        ]
        with bgtransfer.Session("o", home=tmp_path / "home", background=False, max_per_host=1) as s:
            ts = [s.download(u, tmp_path / f"{i}.bin", **FAST) for i, u in enumerate(urls)]
            s.wait_all(ts, timeout=60)
        first = server.requests("/gen/")[-1]
        second = other.requests("/gen/")[-1]
    assert all(t.error is None for t in ts)
    # One host, two ports, two origins: both ran at once (each takes ~2 s at this rate, so
    # keyed on the host alone the second would have started 2 s after the first).
    assert abs(first.time - second.time) < 1.0


def test_a_segmented_task_counts_its_connections(tmp_path: Path) -> None:
    # 1.5 MiB segments: never split (a split closes a response the server is still sending,
    # which it would count until its next write fails).
    size = 6 * MiB
    with FaultServer() as srv:
        urls = [srv.url(f"/gen/{size}?rate=3000000&seed={i}") for i in range(2)]
        with bgtransfer.Session("c", home=tmp_path / "home", background=False, max_per_host=3) as s:
            seg = s.download(urls[0], tmp_path / "seg.bin", segments=4, **FAST)
            wait_until(lambda: seg.bytes_received > 0, 30, "the segmented download")
            plain = s.download(urls[1], tmp_path / "plain.bin", **FAST)
            s.wait_all([seg, plain], timeout=120)
        peak = srv.peak_concurrency()
        ranges = [r for r in srv.requests("/gen/") if r.query.get("seed") == "0" and r.range]
    assert seg.error is None
    assert plain.error is None
    assert (tmp_path / "seg.bin").read_bytes() == gen_bytes(size, 0)
    assert len(ranges) >= 2  # it did open more than one connection
    # Four segments asked for, three connections allowed to the origin, one other task:
    # counting tasks would have opened five at once.
    assert peak <= 3, peak


def test_low_speed_rule_is_on_by_default(session: bgtransfer.Session, tmp_path: Path) -> None:
    t = session.download("http://127.0.0.1:9/x", tmp_path / "x.bin", max_attempts=1)
    row = session._async._engine_or_raise().get(t.id)
    assert row.spec.low_speed_limit == DEFAULT_LOW_SPEED_LIMIT > 0
    assert row.spec.low_speed_time == DEFAULT_LOW_SPEED_TIME
    t.wait(timeout=30)


def test_a_trickling_server_gives_up_its_slot(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    # 1 byte every 0.2 s keeps a 2 s idle timer alive forever; the low-speed rule (here
    # 1000 B/s over 1 s) ends each attempt, and five slow attempts in a row end the task.
    trickle = server.url(f"/gen/{MiB}?trickle=1&interval=0.2&key={key}")
    fine = server.url(f"/gen/{MiB}?key=f{key}")
    with bgtransfer.Session("t", home=tmp_path / "home", background=False, max_per_host=1) as s:
        slow = s.download(
            trickle,
            tmp_path / "slow.bin",
            request_timeout=2.0,
            low_speed_limit=1000,
            low_speed_time=1.0,
            **FAST,
        )
        other = s.download(fine, tmp_path / "fine.bin", **FAST)
        s.wait_all([slow, other], timeout=60)
    assert isinstance(slow.error, bgtransfer.TransferTimeout)
    assert "attempts in a row" in str(slow.error)
    assert other.error is None
    assert (tmp_path / "fine.bin").read_bytes() == gen_bytes(MiB)
    mine = [r for r in server.requests(f"/gen/{MiB}") if r.query.get("key") == key]
    assert len(mine) == 5


def test_max_bytes_fails_an_announced_length_before_writing(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    url = server.url(f"/gen/{2 * MiB}?key={key}")
    t = session.download(url, tmp_path / "big.bin", max_bytes=MiB, **FAST).wait(timeout=30)
    assert isinstance(t.error, bgtransfer.FileTooLarge)
    assert str(2 * MiB) in str(t.error)
    assert t.bytes_received == 0
    assert not (tmp_path / "big.bin").exists()
    assert [p for p in os.listdir(tmp_path) if p.endswith(".bgtransfer-part")] == []
    assert len([r for r in server.requests("/gen/") if r.query.get("key") == key]) == 1


def test_max_bytes_fails_a_body_that_grows_past_it(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    url = server.url(f"/gen/{4 * MiB}?chunked=1&key={key}")  # no length announced
    t = session.download(url, tmp_path / "c.bin", max_bytes=MiB, **FAST).wait(timeout=30)
    assert isinstance(t.error, bgtransfer.FileTooLarge)
    assert "grew past" in str(t.error)
    assert MiB < t.bytes_received <= 2 * MiB  # stopped within one read of the limit
    assert not (tmp_path / "c.bin").exists()
    assert [p for p in os.listdir(tmp_path) if p.endswith(".bgtransfer-part")] == []
    ok = session.download(url, tmp_path / "ok.bin", max_bytes=4 * MiB, **FAST).wait(timeout=30)
    assert ok.error is None
    assert (tmp_path / "ok.bin").read_bytes() == gen_bytes(4 * MiB)


POST_CHILD = """
import sys, time, bgtransfer
home, src, url = sys.argv[1:4]
with bgtransfer.Session("fg", home=home, background=False) as s:
    s.upload(src, url, method="POST")
    print("started", flush=True)
    time.sleep(60)
"""


def test_post_cut_by_a_killed_foreground_process_is_not_resent(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    src = tmp_path / "form.bin"
    src.write_bytes(os.urandom(128 << 10))
    name = f"fg-{key}"
    url = server.url(f"/upload/{name}?stall=20&times=1")
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", POST_CHILD, str(home), str(src), url],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: server.upload_received(name) >= 128 << 10, 30, "the POST")
    finally:
        child.kill()
        child.wait(timeout=10)
    with bgtransfer.Session("fg", home=home, background=False) as s:
        (t,) = s.tasks()
        assert t.state is TaskState.SUSPENDED  # found interrupted
        t.resume()
        t.wait(timeout=30)
        assert isinstance(t.error, bgtransfer.ReadError), t.error
        assert "POST is not retried" in str(t.error)
    posts = [r for r in server.requests(f"/upload/{name}") if r.method == "POST"]
    assert len(posts) == 1
