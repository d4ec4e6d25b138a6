"""HTTPS bodies decrypted in a thread of their own (``_engine/_pump.py``, ``TLSBody.read``).

Against real TLS 1.3 (the project's FaultServer behind the TLS relay of
test_rawbody_tls.py, a CA made per module by the openssl CLI) and a verifying client: first
the pump alone under aiohttp's taken-over response, then whole downloads through the engine
(a foreground Session that trusts the CA through ``ca_bundle=``), where the idle timeout,
the low-speed watchdog, suspend, a reset and pacing must hold exactly as on the loop's path.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

import bgtransfer
from bgtransfer._engine._pump import Pump
from bgtransfer._engine._rawbody import (
    MIN_RAW_BYTES,
    PUMP_DEPTH,
    THREAD_ENV,
    TLSBody,
    decrypt_in_thread,
    take_over,
)
from bgtransfer.testing import FaultServer, gen_bytes
from tests.daemon.test_perf_cacert import relay
from tests.engine.test_rawbody_tls import Pki, client_ctx, pki, plain, tamper, tls_relay

__all__ = ["pki", "plain"]  # module fixtures shared with the TLS fast path's tests

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

BIG = MIN_RAW_BYTES + (3 << 20) + 4321  # not a multiple of any read size
CUT = MIN_RAW_BYTES + (1 << 20) + 999  # inside the part the pump reads
THREAD = "bgtransfer-body"


def body_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD and t.is_alive()]


def no_body_thread_within(seconds: float) -> bool:
    for _ in range(int(seconds / 0.01)):  # bounded
        if not body_threads():
            return True
        time.sleep(0.01)
    return not body_threads()


@pytest.fixture(autouse=True)
def threaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pump (opt-in: see decrypt_in_thread)."""
    monkeypatch.setenv(THREAD_ENV, "1")


def test_the_thread_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    assert decrypt_in_thread()
    for other in ("0", "", "yes"):
        monkeypatch.setenv(THREAD_ENV, other)
        assert not decrypt_in_thread()
    monkeypatch.delenv(THREAD_ENV)
    assert not decrypt_in_thread()


# -- the pump under a taken-over response ------------------------------------------------------


async def read_all(raw: TLSBody, limit: int = 1 << 20, pause: float = 0.0) -> bytes:
    """What ``Downloader._raw_stream`` does with a taken-over body, keeping the bytes."""
    out = bytearray(raw.buffered)
    left = raw.remaining
    for _ in range(100_000):  # bounded: more reads than any body here needs
        if left <= 0:
            break
        async with asyncio.timeout(20):
            chunk = await raw.read(min(limit, left))
        if not chunk:
            raise ConnectionError("body cut short")
        out += chunk
        left -= len(chunk)
        if pause:
            await asyncio.sleep(pause)
    return bytes(out)


def test_a_big_tls_body_comes_through_the_pump_byte_exact_and_bounded(
    pki: Pki, plain: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    made: list[int] = []

    async def go() -> bytes:
        async with tls_relay(pki, plain) as port, aiohttp.ClientSession() as http:
            url = f"https://127.0.0.1:{port}/gen/{BIG}?seed=51"
            async with http.get(url, ssl=client_ctx(pki.ca)) as resp:
                raw = take_over(resp, tls=True)
                assert isinstance(raw, TLSBody)
                try:
                    # A slow consumer: the thread fills every buffer it may and then waits.
                    body = await read_all(raw, limit=256 << 10, pause=0.002)
                    assert raw.pump is not None
                    made.append(raw.pump.buffers)
                    resp.close()  # the engine's order: the response, then the body
                    return body
                finally:
                    raw.close()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        body = asyncio.run(go())
    assert body == gen_bytes(BIG, seed=51)
    assert 2 <= made[0] <= PUMP_DEPTH  # never more buffers than the pool's depth
    assert no_body_thread_within(2)
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_closing_while_the_thread_waits_for_data_is_prompt(pki: Pki, plain: FaultServer) -> None:
    """A suspend, a cancel or the idle timeout cancels the read and closes the body while the
    thread is blocked on a silent server: the thread stops at once, not when data comes."""

    async def go() -> tuple[int, float]:
        async with tls_relay(pki, plain) as port, aiohttp.ClientSession() as http:
            url = f"https://127.0.0.1:{port}/gen/{BIG}?seed=52&stall_body={CUT}&stall=30"
            async with http.get(url, ssl=client_ctx(pki.ca)) as resp:
                raw = take_over(resp, tls=True)
                assert isinstance(raw, TLSBody)
                got = len(raw.buffered)
                try:
                    while got < CUT:
                        got += len(await asyncio.wait_for(raw.read(1 << 20), 20))
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(raw.read(1 << 20), 0.3)  # the stall
                    assert body_threads()  # blocked in its poll
                finally:
                    t0 = time.monotonic()
                    raw.close()
                    took = time.monotonic() - t0
                    resp.close()
                return got, took

    got, took = asyncio.run(go())
    assert got == CUT
    assert took < 1.0  # the halt woke the thread; it did not wait out its poll step
    assert no_body_thread_within(1)


def test_a_tampered_record_raises_in_the_loop_and_nothing_after_it_is_returned(
    pki: Pki, plain: FaultServer
) -> None:
    at = MIN_RAW_BYTES + (1 << 20)

    async def go() -> tuple[bytes, BaseException | None]:
        async with (
            tls_relay(pki, plain) as port,
            tamper(port, at) as bad_port,
            aiohttp.ClientSession() as http,
        ):
            url = f"https://127.0.0.1:{bad_port}/gen/{BIG}?seed=53"
            async with http.get(url, ssl=client_ctx(pki.ca)) as resp:
                raw = take_over(resp, tls=True)
                assert isinstance(raw, TLSBody)
                got = bytearray(raw.buffered)
                try:
                    for _ in range(10_000):  # bounded
                        chunk = await asyncio.wait_for(raw.read(1 << 20), 20)
                        if not chunk:
                            return bytes(got), None
                        got += chunk
                except OSError as exc:
                    return bytes(got), exc
                finally:
                    raw.close()
                raise AssertionError("unbounded read")

    got, err = asyncio.run(go())
    assert isinstance(err, ssl.SSLError), err
    assert len(got) < BIG
    assert got == gen_bytes(BIG, seed=53)[: len(got)]
    assert no_body_thread_within(1)


def test_the_watchdog_order_cut_then_close_while_the_thread_reads(
    pki: Pki, plain: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    """``Downloader._watch`` cuts the body and closes the response while the thread may be
    inside the session: the response's close must not start a TLS shutdown on the loop
    (asyncio's protocol is unwrapped at the take-over), and the read ends as a cut body."""

    touched: list[str] = []

    async def go() -> tuple[int, bytes]:
        async with tls_relay(pki, plain) as port, aiohttp.ClientSession() as http:
            url = f"https://127.0.0.1:{port}/gen/{BIG}?seed=54&stall_body={CUT}&stall=30"
            async with http.get(url, ssl=client_ctx(pki.ca)) as resp:
                assert resp.connection is not None
                assert resp.connection.transport is not None
                sslobj = resp.connection.transport.get_extra_info("ssl_object")
                assert isinstance(sslobj, ssl.SSLObject)
                raw = take_over(resp, tls=True)
                assert isinstance(raw, TLSBody)
                # A TLS shutdown started on the loop would call these with the thread inside
                # the same session (an OpenSSL object is not safe from two threads).
                for name in ("unwrap", "write", "do_handshake"):
                    setattr(sslobj, name, lambda *a, name=name: touched.append(name))
                got = len(raw.buffered)
                try:
                    while got < CUT:
                        got += len(await asyncio.wait_for(raw.read(1 << 20), 20))

                    def watchdog() -> None:  # what Downloader._watch does
                        raw.cut()
                        resp.close()

                    asyncio.get_running_loop().call_later(0.2, watchdog)
                    return got, bytes(await asyncio.wait_for(raw.read(1 << 20), 10))
                finally:
                    raw.close()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        got, last = asyncio.run(go())
    assert (got, last) == (CUT, b"")
    assert touched == []
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
    assert no_body_thread_within(1)


def test_a_pump_needs_two_buffers() -> None:
    class Never:
        def fill(self, view: memoryview) -> int:
            raise AssertionError("not called")

        def halt(self) -> None:
            pass

    async def go() -> None:
        Pump(Never(), 10, size=4, depth=1, on_stopped=lambda: None)

    with pytest.raises(ValueError, match="two buffers"):
        asyncio.run(go())


# -- through the engine ------------------------------------------------------------------------


@pytest.fixture
def https(pki: Pki, plain: FaultServer) -> Iterator[str]:
    with relay(pki, plain) as port:
        yield f"https://127.0.0.1:{port}"


@pytest.fixture(params=["thread", "loop"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a TLS body is read: decrypted in the pump's thread, or on the loop."""
    monkeypatch.setenv(THREAD_ENV, "1" if request.param == "thread" else "0")
    return str(request.param)


@pytest.fixture
def session(tmp_path: Path, path: str) -> Iterator[bgtransfer.Session]:
    with bgtransfer.Session("tls-pump", home=tmp_path / "home", background=False) as s:
        yield s


def key() -> str:
    return uuid.uuid4().hex[:10]


def requests_of(server: FaultServer, k: str) -> list[str | None]:
    return [r.range for r in server.requests("/gen/") if r.query.get("key") == k]


def test_an_https_body_that_stalls_times_out_and_resumes_where_it_stopped(
    https: str, pki: Pki, plain: FaultServer, session: bgtransfer.Session, tmp_path: Path
) -> None:
    k = key()
    dest = tmp_path / "stall.bin"
    url = f"{https}/gen/{BIG}?seed=61&stall_body={CUT}&stall=30&times=1&key={k}"
    t0 = time.monotonic()
    task = session.download(
        url, dest, ca_bundle=str(pki.ca), request_timeout=1.0, retry_wait=0.05
    ).wait(60)
    assert task.state is bgtransfer.TaskState.COMPLETED, task.error
    assert time.monotonic() - t0 < 25  # the idle timeout ended the stall, not the server
    assert dest.read_bytes() == gen_bytes(BIG, seed=61)
    assert requests_of(plain, k) == [None, f"bytes={CUT}-"]  # every byte before it kept
    first = task.history()[0]
    assert "no data for 1 s" in str(first["outcome"]), first


def test_an_https_body_reset_mid_way_resumes_byte_exact(
    https: str, pki: Pki, plain: FaultServer, session: bgtransfer.Session, tmp_path: Path
) -> None:
    k = key()
    dest = tmp_path / "rst.bin"
    url = f"{https}/gen/{BIG}?seed=62&rst={CUT}&times=1&key={k}"
    task = session.download(url, dest, ca_bundle=str(pki.ca), retry_wait=0.05).wait(60)
    assert task.state is bgtransfer.TaskState.COMPLETED, task.error
    assert dest.read_bytes() == gen_bytes(BIG, seed=62)
    first, second = requests_of(plain, k)
    assert first is None
    assert second is not None
    start = int(second.removeprefix("bytes=").rstrip("-"))
    # A reset discards what the kernel had not handed over yet (the resume starts where the
    # file ends, maybe before the cut); never past what was sent.
    assert 0 <= start <= CUT
    assert "connection lost at byte" in str(task.history()[0]["outcome"])


def test_suspend_during_an_https_body_is_prompt_and_resume_completes(
    https: str,
    pki: Pki,
    plain: FaultServer,
    session: bgtransfer.Session,
    tmp_path: Path,
    path: str,
) -> None:
    k = key()
    dest = tmp_path / "suspend.bin"
    url = f"{https}/gen/{BIG}?seed=63&stall_body={CUT}&stall=30&times=1&key={k}"
    task = session.download(url, dest, ca_bundle=str(pki.ca), retry_wait=0.05)
    for _ in range(2000):  # bounded: 20 s
        if task.bytes_received >= CUT and (body_threads() or path == "loop"):
            break
        time.sleep(0.01)
    assert task.bytes_received == CUT
    # The body is read by the pump's thread (now blocked on the stall), or on the loop.
    assert bool(body_threads()) is (path == "thread")
    t0 = time.monotonic()
    task.suspend()
    took = time.monotonic() - t0
    assert task.state is bgtransfer.TaskState.SUSPENDED
    assert took < 10.0  # the stall lasts 30 s: suspend did not wait for data (a commit may be slow)
    assert no_body_thread_within(1)
    task.resume()
    task.wait(60)
    assert task.state is bgtransfer.TaskState.COMPLETED, task.error
    assert dest.read_bytes() == gen_bytes(BIG, seed=63)
    assert requests_of(plain, k) == [None, f"bytes={CUT}-"]


def test_the_low_speed_watchdog_cuts_a_stalled_https_body(
    https: str, pki: Pki, plain: FaultServer, session: bgtransfer.Session, tmp_path: Path
) -> None:
    k = key()
    dest = tmp_path / "slow.bin"
    url = f"{https}/gen/{BIG}?seed=64&stall_body={CUT}&stall=30&times=1&key={k}"
    task = session.download(
        url,
        dest,
        ca_bundle=str(pki.ca),
        retry_wait=0.05,
        low_speed_limit=1000,
        low_speed_time=1.0,
    ).wait(60)
    assert task.state is bgtransfer.TaskState.COMPLETED, task.error
    assert dest.read_bytes() == gen_bytes(BIG, seed=64)
    assert requests_of(plain, k) == [None, f"bytes={CUT}-"]
    assert "slower than 1000 B/s" in str(task.history()[0]["outcome"])


def test_a_rate_capped_https_body_is_byte_exact(
    https: str, pki: Pki, plain: FaultServer, session: bgtransfer.Session, tmp_path: Path
) -> None:
    # 8 MB/s: the pacer asks the pump for reads of 800 kB, not the 1 MiB buffers' worth.
    dest = tmp_path / "capped.bin"
    url = f"{https}/gen/{BIG}?seed=65"
    task = session.download(url, dest, ca_bundle=str(pki.ca), max_rate=8_000_000).wait(60)
    assert task.state is bgtransfer.TaskState.COMPLETED, task.error
    assert dest.read_bytes() == gen_bytes(BIG, seed=65)
