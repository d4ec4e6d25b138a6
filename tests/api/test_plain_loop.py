"""The loop a user writes first, against a real daemon: ``t = s.download(u, p); t.wait()``.

A Session keeps its connections to the daemon alive between calls; a kept connection the
daemon closed (killed, restarted, idle timeout) is replaced without the caller noticing;
a task known finished is waited on without asking the daemon at all.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer import AsyncSession, Session, TaskNotFound, TaskState, TransferError
from bgtransfer._client import DaemonClient
from bgtransfer.testing import FaultServer
from tests.daemon.conftest import daemon_pid, kill_daemon

SIZE = 16 * 1024
FAST: dict[str, Any] = {"retry_wait": 0.05, "max_retry_wait": 0.2}


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    yield h
    kill_daemon(h)


def _client(s: Session | AsyncSession) -> DaemonClient:
    inner = s._async if isinstance(s, Session) else s
    client = inner._backend_or_raise().client  # type: ignore[attr-defined]
    assert isinstance(client, DaemonClient)
    return client


def _kept_inodes(client: DaemonClient) -> list[int]:
    """The local socket inode of every idle kept connection (a new connection, a new inode)."""
    return [os.fstat(k.sock.fileno()).st_ino for k in client._pool]


def test_the_plain_loop_reuses_one_connection(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    with Session("loop", home=home) as s:
        client = _client(s)
        first = s.download(server.url(f"/gen/16K?key={key}"), tmp_path / "f0", **FAST).wait(30)
        assert first.state is TaskState.COMPLETED
        before = _kept_inodes(_client(s))
        assert len(before) == 1
        for n in range(1, 6):
            t = s.download(server.url(f"/gen/16K?key={key}&n={n}"), tmp_path / f"f{n}", **FAST)
            assert t.wait(30).state is TaskState.COMPLETED
        assert _kept_inodes(_client(s)) == before
    assert client._pool == []  # closing the session closed its kept connection
    for n in range(6):
        assert (tmp_path / f"f{n}").stat().st_size == SIZE


def test_a_kept_connection_outlives_a_sigkilled_daemon(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    with Session("restart", home=home) as s:
        s.download(server.url(f"/gen/16K?key={key}"), tmp_path / "a", **FAST).wait(30)
        old_pid, old = daemon_pid(home), _kept_inodes(_client(s))
        assert old_pid is not None
        assert len(old) == 1
        kill_daemon(home, signal.SIGKILL)
        # The kept connection is dead: the next call starts a daemon and goes on.
        t = s.download(server.url(f"/gen/16K?key={key}&n=2"), tmp_path / "b", **FAST)
        assert t.wait(30).state is TaskState.COMPLETED
        new_pid = daemon_pid(home)
        assert new_pid is not None
        assert new_pid != old_pid
        assert _kept_inodes(_client(s)) != old
    assert (tmp_path / "b").stat().st_size == SIZE


def test_a_connection_the_daemon_closed_when_idle_is_replaced(
    server: FaultServer, home: Path, tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daemon (started by this session, so it inherits this) drops idle connections
    # after 1 s; the client still thinks its connection young (under IDLE_MAX).
    monkeypatch.setenv("BGTRANSFER_HEADER_TIMEOUT", "1")
    monkeypatch.setattr("bgtransfer._client.IDLE_MAX", 30.0)
    with Session("idle", home=home) as s:
        s.download(server.url(f"/gen/16K?key={key}"), tmp_path / "a", **FAST).wait(30)
        pid, old = daemon_pid(home), _kept_inodes(_client(s))
        time.sleep(1.6)
        t = s.download(server.url(f"/gen/16K?key={key}&n=2"), tmp_path / "b", **FAST)
        assert t.wait(30).state is TaskState.COMPLETED
        assert daemon_pid(home) == pid  # the same daemon: only the connection was new
        assert _kept_inodes(_client(s)) != old

    async def no_start() -> None:
        # start=False makes any connection failure a DaemonUnavailable: only the
        # replacement of the closed kept connection lets this second call through.
        client = DaemonClient(str(home), keep_alive=True)
        try:
            assert (await client.call("GET", "/v1/status", start=False))["pid"] == pid
            kept = _kept_inodes(client)
            await asyncio.sleep(1.6)
            assert (await client.call("GET", "/v1/status", start=False))["pid"] == pid
            assert _kept_inodes(client) != kept
        finally:
            await client.close()

    asyncio.run(no_start())


def test_waiting_on_a_finished_task_needs_no_daemon(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    with Session("done", home=home) as s:
        t = s.download(server.url(f"/gen/16K?key={key}"), tmp_path / "a", **FAST).wait(30)
        kill_daemon(home, signal.SIGKILL)
        assert daemon_pid(home) is None
        assert t.wait(5) is t  # answered from memory: no daemon was started to answer it
        assert t.state is TaskState.COMPLETED
        assert daemon_pid(home) is None
    with pytest.raises(TransferError, match="closed"):
        t.wait()  # a closed session still says so, finished task or not


def test_async_wait_on_a_finished_task_needs_no_daemon(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    async def main() -> None:
        async with AsyncSession("adone", home=home) as s:
            t = await s.download(server.url(f"/gen/16K?key={key}"), tmp_path / "a", **FAST)
            await t.wait(30)
            kill_daemon(home, signal.SIGKILL)
            assert await t.wait(5) is t
            assert t.state is TaskState.COMPLETED
            assert daemon_pid(home) is None
            # A task not yet known finished still asks (and so starts a daemon again).
            u = await s.download(server.url(f"/gen/16K?key={key}&n=2"), tmp_path / "b", **FAST)
            assert (await u.wait(30)).state is TaskState.COMPLETED
            assert daemon_pid(home) is not None

    asyncio.run(main())


def test_threads_share_one_session(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    errors: list[BaseException] = []

    with Session("threads", home=home) as s:

        def loop(n: int) -> None:
            try:
                for i in range(4):
                    url = server.url(f"/gen/16K?key={key}&t={n}&i={i}")
                    t = s.download(url, tmp_path / f"t{n}-{i}", **FAST)
                    assert t.wait(30).state is TaskState.COMPLETED
            except BaseException as exc:  # noqa: BLE001 - reported below, with its class
                errors.append(exc)

        threads = [threading.Thread(target=loop, args=(n,)) for n in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not any(th.is_alive() for th in threads)
        assert errors == []
        assert 1 <= len(_client(s)._pool) <= 4
    assert sorted(p.name for p in tmp_path.glob("t*-*")) == sorted(
        f"t{n}-{i}" for n in range(4) for i in range(4)
    )


def test_errors_keep_their_class_on_a_kept_connection(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    with Session("errs", home=home) as s:
        for _ in range(2):
            with pytest.raises(TaskNotFound):
                s.task("0" * 32)
        with pytest.raises(bgtransfer.InvalidRequest):
            s.download("ftp://example.invalid/x", tmp_path / "x")
        t = s.download(server.url(f"/gen/16K?key={key}"), tmp_path / "a", **FAST)
        assert t.wait(30).state is TaskState.COMPLETED


def test_a_repeated_submit_of_a_finished_task_is_waited_on_from_its_answer(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    url = server.url(f"/gen/16K?key={key}")
    with Session("again", home=home) as s:
        s.download(url, tmp_path / "a", idempotency_key="k1", **FAST).wait(30)
        again = s.download(url, tmp_path / "a", idempotency_key="k1", **FAST)
        kill_daemon(home, signal.SIGKILL)
        # The submit's answer already said COMPLETED: the wait needs no daemon.
        assert again.wait(5).state is TaskState.COMPLETED
        assert daemon_pid(home) is None


def test_a_forked_child_does_not_share_the_parents_connection(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    async def main() -> None:
        client = DaemonClient(str(home), keep_alive=True)
        try:
            pid = (await client.call("GET", "/v1/status"))["pid"]
            parent_kept = _kept_inodes(client)
            assert len(parent_kept) == 1
            with warnings.catch_warnings():  # 3.12+ warns of fork with threads: none run here
                warnings.simplefilter("ignore", DeprecationWarning)
                child = os.fork()
            if child == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    answer = asyncio.run(client.call("GET", "/v1/status", start=False))
                    fresh = _kept_inodes(client)
                    code = 0 if answer["pid"] == pid and fresh != parent_kept else 2
                finally:
                    os._exit(code)
            _, status = await asyncio.to_thread(os.waitpid, child, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            # The parent's connection is untouched and still answers.
            assert (await client.call("GET", "/v1/status", start=False))["pid"] == pid
            assert _kept_inodes(client) == parent_kept
        finally:
            await client.close()

    asyncio.run(main())
